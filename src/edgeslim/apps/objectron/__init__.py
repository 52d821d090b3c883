"""3D boxes from one photo: MediaPipe's single-stage Objectron (chairs) on LiteRT, its belief/displacement output
decoded to 9 box keypoints (`decode`), lifted to a box's rotation, translation and proportions up to scale with EPnP
(`lift`), and drawn; `edgeslim objectron` (`cli`) wraps them.

>>> from edgeslim.apps.objectron import ObjectronDetector, draw_boxes      # doctest: +SKIP
>>> det = ObjectronDetector.from_zoo(local_dir="models")                  # doctest: +SKIP
>>> for box in det.detect(cv2.imread("chair.jpg")):                       # doctest: +SKIP
...     print(box.score, box.pose.rotation, box.pose.translation, box.pose.dimensions)
"""

from __future__ import annotations

from .decode import DecodeConfig, Keypoints, decode, estimate_offset_scale, find_peaks
from .detector import DEFAULT_MODEL, Box3D, Fit, ObjectronConfig, ObjectronDetector, draw_boxes, fit_image
from .lift import BOX_EDGES, UNIT_BOX, BoxPose, camera_matrix, lift_box, project_box

__all__ = ["DecodeConfig", "Keypoints", "decode", "estimate_offset_scale", "find_peaks", "DEFAULT_MODEL", "Box3D", "Fit",
           "ObjectronConfig", "ObjectronDetector", "draw_boxes", "fit_image", "BOX_EDGES", "UNIT_BOX", "BoxPose",
           "camera_matrix", "lift_box", "project_box"]
