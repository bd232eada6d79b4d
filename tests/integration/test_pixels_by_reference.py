"""Pixels never pass through the ingress: the Preprocessor answers it with a small record (prompt, sizes) whose
pixels are a Ray object reference of their own, which only the VisionEncoder resolves. Before, the ingress received
the whole record (a 2048x1536 photo: 9.4 MB of pixels) and kept it pinned in the object store for the request's life."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_image, to_bytes
from tests.integration.conftest import BASE_URL, LITE_ROUTE

pytestmark = pytest.mark.integration


def test_the_preprocessor_answers_the_ingress_with_a_small_record_and_the_pixels_by_reference(served):
    import ray
    from ray import cloudpickle, serve

    photo = to_bytes(make_image(2048, 1536, seed=5), "PNG")
    preprocessor = serve.get_deployment_handle("Preprocessor", app_name="lite")  # the handle the ingress calls
    prepared = preprocessor.prepare.remote(photo, "").result(timeout_s=120)

    assert prepared.pixels is None and prepared.original_size == (2048, 1536)
    assert len(cloudpickle.dumps(prepared)) < 4096  # the record as it crosses, its pixel reference included
    pixels = ray.get(prepared.pixels_ref, timeout=60)
    assert pixels.shape == (1536, 2048, 3) and pixels.nbytes == 2048 * 1536 * 3

    # The same photo through the graph: the encoder resolves the reference and the page is read.
    response = httpx.post(f"{BASE_URL}{LITE_ROUTE}/ocr", content=photo, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["image"]["width"] == 2048
