"""Metrics files: reading (malformed lines named, a cut-off last line tolerated), the resume
truncation of JsonlWriter, and the optional TensorBoard writer."""
import json
import struct

import pytest

from vi_jax.metrics import JsonlWriter, MetricsError, TensorBoardWriter, open_writer, read_metrics

RECORDS = [{"kind": "train", "epoch": 1, "train_elbo": -50.0}, {"kind": "train", "epoch": 2, "train_elbo": -45.0},
           {"kind": "eval", "epoch": 2, "eval_elbo": -46.0}, {"kind": "train", "epoch": 3, "train_elbo": -44.0}]


def write_lines(path, text):
    path.write_text(text)
    return path


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_read_metrics_returns_the_records_and_skips_a_cut_off_last_line(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", jsonl(RECORDS))
    assert read_metrics(path) == RECORDS
    write_lines(path, jsonl(RECORDS) + '{"kind": "train", "epoch": 4, "train_el')
    assert read_metrics(path) == RECORDS


@pytest.mark.parametrize("text,line", [
    (jsonl(RECORDS[:1]) + '{"kind": "train", "ep\n' + jsonl(RECORDS[1:]), 2),   # cut off, then written past
    (jsonl(RECORDS) + "\n", 5),                                                 # a blank line
    (jsonl(RECORDS[:2]) + '["not", "a", "record"]\n', 3),
    (jsonl(RECORDS[:1]) + '{"kind": "train", "epoch": "2"}\n', 2),
], ids=["malformed_middle_line", "blank_line", "not_an_object", "epoch_not_an_integer"])
def test_a_malformed_line_is_an_error_naming_the_file_and_the_line(tmp_path, text, line):
    path = write_lines(tmp_path / "m.jsonl", text)
    with pytest.raises(MetricsError, match=rf"m\.jsonl, line {line}:"):
        read_metrics(path)


def test_writer_starts_afresh_or_resumes_before_the_first_epoch_it_will_write(tmp_path):
    path = tmp_path / "sub" / "m.jsonl"
    writer = open_writer(str(path))  # a fresh run: the directory is made, the file emptied
    for record in RECORDS:
        writer.write(record)
    assert read_metrics(path) == RECORDS
    with open(path, "a") as f:
        f.write('{"kind": "eval", "epo')  # died mid-line
    open_writer(path, first_epoch=3)
    assert read_metrics(path) == RECORDS[:3] and path.read_text().endswith("\n")
    open_writer(path, first_epoch=2)
    assert read_metrics(path) == RECORDS[:1]
    open_writer(path)
    assert path.read_text() == ""
    assert open_writer(None) is None


def test_resume_refuses_to_rewrite_a_damaged_file(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", jsonl(RECORDS[:1]) + "garbage\n" + jsonl(RECORDS[1:]))
    with pytest.raises(MetricsError, match="line 2"):
        JsonlWriter(path).begin(3)
    assert "garbage" in path.read_text()


def tensorboard_scalars(logdir):
    """{tag: [(step, value)]} of the scalar events in logdir's event files (TFRecord framing:
    length u64, its crc u32, the serialized Event, its crc u32)."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_writer_logs_numeric_fields_per_kind(tmp_path):
    pytest.importorskip("tensorboardX", reason="the optional 'tensorboard' extra is not installed")
    writer = open_writer(TensorBoardWriter(tmp_path / "tb"))
    for record in RECORDS:
        writer.write({**record, "note": "skipped: not a number"})
    writer.close()
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert sorted(scalars) == ["eval/eval_elbo", "train/train_elbo"]
    assert scalars["train/train_elbo"] == [(1, -50.0), (2, -45.0), (3, -44.0)]
    assert scalars["eval/eval_elbo"] == [(2, -46.0)]
