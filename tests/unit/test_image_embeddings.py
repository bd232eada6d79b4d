"""The encoder -> decoder handoff: image embeddings cross Ray in the vision tower's dtype (bfloat16 as its bits),
so a bfloat16 tower sends half the bytes of float32, and the decoder gets exactly the tower's values back."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from serve_app.stage_io import ImageEmbeddings

GRID = np.array([1, 8, 12], dtype=np.int64)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _through_ray(image: ImageEmbeddings) -> tuple[ImageEmbeddings, int]:
    """A pickle round trip the way Ray moves a task result (protocol 5, arrays out of band and read-only on
    arrival); also returns the bytes of the embeddings' out-of-band buffer (the other one is the grid)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(image, protocol=5, buffer_callback=buffers.append)
    arrived = [bytes(buffer.raw()) for buffer in buffers]  # bytes: read-only memory, as from the object store
    assert sorted(len(buffer) for buffer in arrived)[0] == GRID.nbytes and len(arrived) == 2
    return pickle.loads(data, buffers=arrived), max(len(buffer) for buffer in arrived)


@pytest.mark.parametrize("name", list(DTYPES))
def test_embeddings_cross_in_the_towers_dtype_and_arrive_bit_exact(name):
    values = torch.randn(24, 64, generator=torch.Generator().manual_seed(0)).to(DTYPES[name])
    image = ImageEmbeddings.from_tensor(values, GRID, encode_ms=3.0, batch_size=2)
    assert image.dtype == name and image.embeddings.shape == (24, 64)

    arrived, wire_bytes = _through_ray(image)
    assert wire_bytes == values.numel() * values.element_size()  # bfloat16 and float16: half of float32
    assert (arrived.encode_ms, arrived.batch_size) == (3.0, 2)
    decoded = arrived.to_tensor(DTYPES[name])
    assert decoded.dtype == DTYPES[name] and torch.equal(decoded, values)
    assert torch.equal(arrived.to_tensor(torch.float32), values.to(torch.float32))
    decoded.add_(1)  # writable: a copy of the read-only arrival, which stays as it came
    assert torch.equal(arrived.to_tensor(DTYPES[name]), values)


def test_one_images_rows_carry_only_those_rows():
    # The encoder hands each image a row view of the batch's output: only that image's bytes cross.
    batch = torch.randn(100, 64).to(torch.bfloat16)
    first, second = torch.split(batch, [30, 70])
    image = ImageEmbeddings.from_tensor(second, GRID)
    arrived, wire_bytes = _through_ray(image)
    assert wire_bytes == 70 * 64 * 2
    assert torch.equal(arrived.to_tensor(torch.bfloat16), second)


def test_float32_arrays_from_callers_convert_to_the_decoders_dtype():
    # Benches and tests build ImageEmbeddings from float32 numpy arrays (the default dtype).
    array = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    image = ImageEmbeddings(array, GRID)
    assert torch.equal(image.to_tensor(torch.bfloat16), torch.from_numpy(array).to(torch.bfloat16))
    assert np.array_equal(image.to_tensor(torch.float32).numpy(), array)


def test_mislabelled_or_unsupported_embeddings_are_refused():
    floats = np.zeros((4, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="int16 bits"):
        ImageEmbeddings(floats, GRID, dtype="bfloat16").to_tensor(torch.bfloat16)
    with pytest.raises(ValueError, match="not supported"):
        ImageEmbeddings(floats, GRID, dtype="float64").to_tensor(torch.float32)
    with pytest.raises(ValueError, match="not supported"):
        ImageEmbeddings.from_tensor(torch.zeros(4, 8, dtype=torch.int8), GRID)
