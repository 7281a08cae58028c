"""One image decoder (issue 9): a 16-bit PNG in a shard gives the same pixels to pseudo-label's teacher and to
train-student's pseudo source, scaled to 8 bits rather than clipped at 255."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from glipkit.data.pseudo import PseudoFilter, PseudoLabelSource
from glipkit.data.shards import write_shard
from glipkit.data.tables import LABELS_SCHEMA, write_table
from glipkit.engine.labelling.teacher_data import CLASSES, ImageBatch, LoaderSettings, TeacherDataset

WIDTH, HEIGHT = 96, 64
CAPTION = "a grey gradient"


def _sixteen_bit_gradient() -> tuple[bytes, np.ndarray]:
    values = np.linspace(0, 65535, WIDTH * HEIGHT).round().astype(np.uint16).reshape(HEIGHT, WIDTH)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), values


def test_sixteen_bit_png_decodes_the_same_for_teacher_and_student(tmp_path):
    png, values = _sixteen_bit_gradient()
    shard = write_shard(tmp_path / "shards" / "00000.tar", [("k0", {"png": png, "txt": CAPTION.encode()})])
    start = CAPTION.index("gradient")
    row = {"key": "k0", "caption": CAPTION, "phrases": [{"text": "gradient", "start": start, "end": start + 8}],
           "shard": str(shard), "width": WIDTH, "height": HEIGHT,
           "boxes": [{"x0": 4.0, "y0": 4.0, "x1": 60.0, "y1": 40.0, "score": 0.9, "phrase": 0}]}
    tables = tmp_path / "labels"
    write_table(tables / "00000.parquet", [row], LABELS_SCHEMA, "pseudo-label", {})

    # pseudo-label: the teacher's data workers (classes mode needs no phrases; the resize is the identity here).
    settings = LoaderSettings(prompt_mode=CLASSES, min_size=HEIGHT, max_size=WIDTH, batch_size=1)
    [batch] = [item for item in TeacherDataset([str(shard)], settings) if isinstance(item, ImageBatch)]
    (h, w), = batch.sizes
    teacher = batch.images[0, :, :h, :w].permute(1, 2, 0).numpy()

    # train-student: the pseudo source reading the same shard joined with its labels table.
    source = PseudoLabelSource(tables, None, filters=PseudoFilter())
    example = source.materialize(next(source.stream(0, seed=0)), random.Random(0))
    student = np.asarray(example.image)

    assert teacher.shape == student.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(teacher, student)
    scaled = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(student[..., 0], scaled)
    clipped = np.clip(values, 0, 255).astype(np.uint8)  # what a plain convert("RGB") of a 16-bit image gives
    assert not np.array_equal(student[..., 0], clipped)
    assert student.max() == 255 and len(np.unique(student)) > 200
