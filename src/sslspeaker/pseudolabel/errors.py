"""The one error of the pseudo-label stage."""


class PseudoLabelError(ValueError):
    """A pool, model or clustering the stage refuses to label from; the message says why in one line."""
