"""A method's options fitted to the size of its training pool, before the method is built."""

from __future__ import annotations

MOCO_DEFAULT_QUEUE = 65536  # MoCo's queue_size default


def fit_options_to_pool(name: str, options: dict, n_examples: int, batch_size: int) -> dict:
    """``options`` of method ``name`` for a pool of ``n_examples`` read in batches of ``batch_size``.

    MoCo's queue is cut to the keys of one epoch (``n_examples // batch_size`` full batches): a
    longer queue would hold two keys of one utterance, a false negative. Other methods' options,
    and a queue that already fits, come back unchanged (a new dict; ``options`` is not modified)."""
    fitted = dict(options)
    if name == "moco":
        limit = (n_examples // batch_size) * batch_size
        if int(fitted.get("queue_size", MOCO_DEFAULT_QUEUE)) > limit:
            fitted["queue_size"] = limit
    return fitted
