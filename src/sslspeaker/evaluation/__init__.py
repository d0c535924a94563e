"""Speaker-verification evaluation."""

from sslspeaker.evaluation.metrics import compute_eer, compute_min_dcf, det_curve, detection_cost

__all__ = ["compute_eer", "compute_min_dcf", "det_curve", "detection_cost"]
