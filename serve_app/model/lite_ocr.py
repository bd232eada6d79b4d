"""A small, CPU-friendly OCR model family: PP-OCRv6 (small) detection + recognition from the `rapidocr` wheel.

Pure Python (numpy, OpenCV, onnxruntime), no Ray; the serving stages wrap these classes:

- VisionEncoder stage -> `TextDetector.detect(image)`: text detection, reading-order sort, line crops,
  angle classification (0/180 degrees) and rotation. Returns `TextRegion`s.
- Decoder stage -> `TextRecognizer.recognize(crops)`: batched CTC text recognition of the crops.
- `assemble_lines(regions, results)` joins the two and applies rapidocr's final filtering.

Models: the three ONNX files ship inside the `rapidocr==3.10.0` wheel, in `<site-packages>/rapidocr/models/`
(`PP-OCRv6_det_small.onnx`, `PP-OCRv6_rec_small.onnx` with its character dictionary in the ONNX metadata,
and `ch_ppocr_mobile_v2.0_cls_mobile.onnx`). Each component is given its file as an explicit `model_path`,
so rapidocr's download branch (taken only when `model_path` is null) is never reached: this runs offline.

Model pre/post-processing is rapidocr's own code, not a rewrite: its `TextDetector` (DB pre-processing,
ONNX session, DB post-processing, `sorted_boxes`), `TextClassifier`, `TextRecognizer` (width-sorted
batching, resize/normalise, `CTCLabelDecode`) and the helpers `RapidOCR.__call__` chains them with
(`resize_image_within_bounds`, `apply_vertical_padding`, `get_rotate_crop_image`, `map_boxes_to_original`).
The result equals `rapidocr.RapidOCR()(image)` with its default configuration.

Colour convention: our API takes and returns RGB uint8 arrays (as decoded by Pillow). rapidocr's models
expect BGR (OpenCV order; `RapidOCR` converts Pillow/bytes/path inputs RGB->BGR itself, but passes numpy
arrays through as BGR), so we convert deliberately at the boundary in both classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import rapidocr
from rapidocr.ch_ppocr_cls import TextClassifier as _RapidClassifier
from rapidocr.ch_ppocr_det import TextDetector as _RapidDetector
from rapidocr.ch_ppocr_rec import TextRecInput
from rapidocr.ch_ppocr_rec import TextRecognizer as _RapidRecognizer
from rapidocr.utils.log import logger as _rapid_logger
from rapidocr.utils.parse_parameters import ParseParams
from rapidocr.utils.process_img import (
    apply_vertical_padding,
    get_rotate_crop_image,
    map_boxes_to_original,
    resize_image_within_bounds,
)

RAPIDOCR_DIR = Path(rapidocr.__file__).resolve().parent
MODEL_DIR = RAPIDOCR_DIR / "models"
DET_MODEL = MODEL_DIR / "PP-OCRv6_det_small.onnx"
REC_MODEL = MODEL_DIR / "PP-OCRv6_rec_small.onnx"
CLS_MODEL = MODEL_DIR / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
DEFAULT_TEXT_SCORE = 0.5  # rapidocr's Global.text_score: lines recognised below it are dropped


@dataclass
class TextRegion:
    quad: np.ndarray  # 4x2 float32: top-left, top-right, bottom-right, bottom-left, pixels of the input image
    crop: np.ndarray  # HxWx3 uint8 RGB text-line image, upright after angle correction
    detection_score: float
    angle: int = 0  # what the angle classifier decided: 0, or 180 when the crop was rotated upright


@dataclass
class OcrLine:
    text: str
    score: float  # recognition confidence
    quad: np.ndarray  # 4x2 float32
    bbox: tuple[int, int, int, int]  # axis-aligned (x1, y1, x2, y2) around quad
    detection_score: float


def _load_config():
    """rapidocr's own default config.yaml (as `RapidOCR()` loads it), with our thread count."""
    if _rapid_logger.getEffectiveLevel() < logging.WARNING:
        _rapid_logger.setLevel(logging.WARNING)  # it logs at INFO for every session it opens
    return ParseParams.load(RAPIDOCR_DIR / "config.yaml")


def _component_cfg(section, cfg, model_path: Path, num_threads: int):
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} is missing: reinstall rapidocr==3.10.0, whose wheel bundles it.")
    engine_cfg = cfg.EngineConfig.onnxruntime
    # rapidocr applies intra_op_num_threads only when 1 <= n <= os.cpu_count(); otherwise onnxruntime's default.
    engine_cfg.intra_op_num_threads = int(num_threads)
    engine_cfg.inter_op_num_threads = 1
    section.engine_cfg = engine_cfg
    section.model_path = str(model_path)
    section.model_root_dir = str(MODEL_DIR)
    return section


def _without_spinning(component, model_path: Path, engine_cfg) -> None:
    """Swap the component's onnxruntime session for one with the same options (rapidocr's OrtInferSession: its
    thread counts, memory arena, full graph optimisation) whose intra-op threads sleep when a run ends instead of
    spin-waiting for the next. The stages share the cores: a pool left spinning after detection burns the core
    that recognition of another page needs."""
    from onnxruntime import GraphOptimizationLevel, InferenceSession, SessionOptions

    options = SessionOptions()
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = bool(engine_cfg.enable_cpu_mem_arena)
    options.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(engine_cfg.intra_op_num_threads)
    options.inter_op_num_threads = int(engine_cfg.inter_op_num_threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    component.session.session = InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


def _rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {getattr(image, 'shape', type(image))}")


MAX_ASPECT = 8  # past this, rapidocr's detector input explodes (a 10x2000 page became 736x138368) or breaks


def _pad_extreme_aspect(img: np.ndarray) -> np.ndarray:
    """Pad very tall or very wide images with white on the right or bottom to an aspect ratio of at most 8.
    Right/bottom padding moves no coordinates, and `map_boxes_to_original` clips boxes to the original size."""
    height, width = img.shape[:2]
    target_width = max(width, -(-height // MAX_ASPECT))
    target_height = max(height, -(-width // MAX_ASPECT))
    if (target_height, target_width) == (height, width):
        return img
    padded = np.full((target_height, target_width, img.shape[2]), 255, dtype=img.dtype)
    padded[:height, :width] = img
    return padded


class TextDetector:
    """Text-line detection, reading order, crops and angle correction (the VisionEncoder stage's work).

    Reuses rapidocr's `RapidOCR` steps up to recognition: `resize_image_within_bounds` (Global.min/max_side_len
    30/2000), `apply_vertical_padding` (very wide images), `ch_ppocr_det.TextDetector` (DB model with its
    pre/post-processing and `sorted_boxes` reading order: top to bottom, left to right within a 10 px band),
    `get_rotate_crop_image` (perspective crop of each quad; tall crops turned 90 degrees),
    `ch_ppocr_cls.TextClassifier` (rotates crops it finds upside down with confidence > 0.9) and
    `map_boxes_to_original` (quads back to the input's pixels).
    """

    def __init__(self, num_threads: int = 1, spinning: bool = True):
        cfg = _load_config()
        self._global = cfg.Global
        self._det = _RapidDetector(_component_cfg(cfg.Det, cfg, DET_MODEL, num_threads))
        self._cls = _RapidClassifier(_component_cfg(cfg.Cls, cfg, CLS_MODEL, num_threads))
        if not spinning:
            _without_spinning(self._det, DET_MODEL, cfg.Det.engine_cfg)
            _without_spinning(self._cls, CLS_MODEL, cfg.Cls.engine_cfg)

    def detect(self, image: np.ndarray) -> list[TextRegion]:
        """RGB uint8 HxWx3 -> text regions in reading order (empty list when there is no text)."""
        _check_rgb(image)
        ori_h, ori_w = image.shape[:2]
        bgr = _pad_extreme_aspect(_rgb_to_bgr(image))
        # As RapidOCR.preprocess_img + detect_and_crop do:
        img, ratio_h, ratio_w = resize_image_within_bounds(bgr, self._global.min_side_len, self._global.max_side_len)
        op_record = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
        if self._global.use_vertical_padding:
            img, op_record = apply_vertical_padding(
                img, op_record, self._global.width_height_ratio, self._global.min_height
            )
        det = self._det(img)
        if det.boxes is None or len(det.boxes) == 0:
            return []
        crops = [get_rotate_crop_image(img, box.copy()) for box in det.boxes]
        # As RapidOCR.cls_and_rotate: crops that are upside down come back rotated by 180 degrees.
        cls = self._cls(crops)
        quads = map_boxes_to_original(det.boxes.astype(np.float32), op_record, ori_h, ori_w)
        return [
            TextRegion(
                quad=np.asarray(quad, dtype=np.float32),
                crop=_rgb_to_bgr(crop),  # BGR -> RGB (the same channel swap)
                detection_score=float(score),
                angle=180 if (label == "180" and label_score > self._cls.cls_thresh) else 0,
            )
            for quad, crop, score, (label, label_score) in zip(quads, cls.img_list, det.scores, cls.cls_res)
        ]


class TextRecognizer:
    """Batched text recognition of line crops (the Decoder stage's work).

    Reuses rapidocr's `ch_ppocr_rec.TextRecognizer`: crops sorted by aspect ratio, batches of `batch_size`
    resized to height 48 and padded to the widest in the batch, the PP-OCRv6 ONNX model, CTC decoding with
    the dictionary stored in the model. Results come back in the order of the input crops.
    """

    def __init__(self, num_threads: int = 1, batch_size: int = 6, spinning: bool = True):
        cfg = _load_config()
        rec_cfg = _component_cfg(cfg.Rec, cfg, REC_MODEL, num_threads)
        rec_cfg.rec_batch_num = int(batch_size)
        rec_cfg.font_path = None
        self._rec = _RapidRecognizer(rec_cfg)
        if not spinning:
            _without_spinning(self._rec, REC_MODEL, rec_cfg.engine_cfg)
        self.batch_size = int(batch_size)

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """RGB uint8 line crops -> [(text, confidence)], one per crop, in order."""
        if not crops:
            return []
        for crop in crops:
            _check_rgb(crop)
            if crop.shape[0] < 1 or crop.shape[1] < 1:
                raise ValueError(f"empty crop {crop.shape}")
        result = self._rec(TextRecInput(img=[_rgb_to_bgr(c) for c in crops], return_word_box=False))
        return [(str(text), float(score)) for text, score in zip(result.txts, result.scores)]


def quad_to_bbox(quad: np.ndarray) -> tuple[int, int, int, int]:
    """Axis-aligned integer box (x1, y1, x2, y2) around a 4x2 quad."""
    quad = np.asarray(quad, dtype=np.float32).reshape(-1, 2)
    x1, y1 = np.floor(quad.min(axis=0))
    x2, y2 = np.ceil(quad.max(axis=0))
    return int(x1), int(y1), int(x2), int(y2)


def assemble_lines(
    regions: list[TextRegion], results: list[tuple[str, float]], text_score: float = DEFAULT_TEXT_SCORE
) -> list[OcrLine]:
    """Join regions with their recognition results, in reading order, dropping what RapidOCR drops:
    lines whose text is blank and lines recognised with confidence below `text_score` (0.5)."""
    if len(regions) != len(results):
        raise ValueError(f"{len(regions)} regions but {len(results)} recognition results")
    return [
        OcrLine(text, score, region.quad, quad_to_bbox(region.quad), region.detection_score)
        for region, (text, score) in zip(regions, results)
        if text.strip() and score >= text_score
    ]
