"""The label audit of a set (executor/pipeline/label_audit.py) from hand-made samples and predictions: findings
ranked across images, unreadable images left out, where each box is written, counts, and audit.json + audit.csv
written both or neither."""
import csv
import json

import numpy as np
import pytest

from executor.pipeline import label_audit
from executor.pipeline.label_audit import audit_predictions, audit_samples, write_audit
from executor.shared import Sample
from mining.base import Detections
from tests.platform import fake_detections

NAMES = ["cat", "dog", "bench"]


def sample(name, boxes, classes):
    return Sample(f"/data/{name}.jpg", 640, 480, "jpg", np.asarray(boxes, np.float32).reshape(-1, 4),
                  np.asarray(classes, np.int64),
                  sources=[f"/data/{name}.txt line {i + 1}" for i in range(len(classes))])


def detections(rows):
    return fake_detections(rows, len(NAMES))


@pytest.fixture
def the_set():
    samples = [sample("a", [[0, 0, 100, 100]], [0]),                                 # backed; a dog missing
               sample("b", [[0, 0, 100, 100], [300, 0, 400, 100]], [0, 0]),          # a wrong class, a spurious
               sample("c", [[0, 0, 100, 100]], [1])]                                 # unreadable
    predictions = [detections([([0, 0, 100, 100], 0.9, 0), ([200, 0, 300, 100], 0.7, 1),
                               ([400, 400, 500, 480], 0.95, 2)]),                    # bench: nobody labels one
                   detections([([0, 0, 100, 100], 0.8, 1)]),
                   Detections.empty(len(NAMES))]
    return samples, predictions


def test_findings_are_ranked_across_the_set_with_where_each_box_is_written(the_set, caplog):
    samples, predictions = the_set
    audit = audit_predictions(samples, predictions, NAMES, confident=0.5, support=0.01, unreadable=[2])
    assert [(f.image, f.finding.kind, f.where) for f in audit.findings] == [
        ("/data/b.jpg", "spurious", "/data/b.txt line 2"),
        ("/data/b.jpg", "wrong_class", "/data/b.txt line 1"),
        ("/data/a.jpg", "missing", "")]
    assert [f.finding.score for f in audit.findings] == pytest.approx([1.0, 0.8, 0.7])
    assert (audit.images, audit.boxes, audit.unreadable) == (2, 3, ["/data/c.jpg"])
    assert audit.counts() == {"by_type": {"missing": 1, "wrong_class": 1, "poor_box": 0, "spurious": 1,
                                          "duplicate": 0},
                              "by_class": {"cat": {"wrong_class": 1, "spurious": 1}, "dog": {"missing": 1}}}
    assert "not audited (e.g. /data/c.jpg)" in caplog.text


def test_audit_samples_reads_every_box_down_to_the_support_level(the_set, monkeypatch):
    samples, predictions = the_set
    asked = {}

    def predict_candidates(detector, samples, conf_thres, batch_size, progress, unreadable):
        asked.update(conf=conf_thres, batch=batch_size)
        unreadable.append(2)
        return predictions

    monkeypatch.setattr(label_audit, "predict_candidates", predict_candidates)
    detector = type("D", (), {"names": NAMES})()
    audit = audit_samples(detector, samples, confident=0.5, support=0.02, batch_size=4)
    assert asked == {"conf": 0.02, "batch": 4}
    assert len(audit.findings) == 3 and audit.unreadable == ["/data/c.jpg"]


def test_audit_json_and_csv(the_set, tmp_path):
    samples, predictions = the_set
    samples.append(sample("d", [[0, 0, 100, 100], [0, 0, 100, 90]], [0, 0]))
    predictions.append(detections([([0, 0, 100, 100], 0.9, 0), ([50, 0, 150, 100], 0.8, 1)]))
    audit = audit_predictions(samples, predictions, NAMES, 0.5, 0.01, unreadable=[2])
    about = {"model": {"weights": "/m.pt"}, "data": {"spec": "/data"}, "settings": {"confident_conf": 0.5}}
    write_audit(audit, about, str(tmp_path / "audit.json"), str(tmp_path / "audit.csv"))
    data = json.loads((tmp_path / "audit.json").read_text())
    assert data["model"] == {"weights": "/m.pt"} and data["settings"] == {"confident_conf": 0.5}
    assert (data["images"], data["boxes"], data["unreadable"]) == (3, 5, ["/data/c.jpg"])
    assert data["counts"]["by_type"]["duplicate"] == 1
    kinds = [f["type"] for f in data["findings"]]
    assert kinds == ["spurious", "duplicate", "wrong_class", "missing", "missing"]
    assert [f["rank"] for f in data["findings"]] == [1, 2, 3, 4, 5]
    duplicate = data["findings"][1]
    assert duplicate == {"rank": 2, "image": "/data/d.jpg", "type": "duplicate", "score": 0.9, "class": "cat",
                         "annotation": {"index": 1, "where": "/data/d.txt line 2", "box": [0, 0, 100, 90]},
                         "evidence": {"box": [0, 0, 100, 100], "class": "cat", "confidence": None, "iou": 0.9,
                                      "annotation": {"index": 0, "where": "/data/d.txt line 1"}},
                         "fix": {"action": "delete_duplicate", "annotation": 0,
                                 "text": "delete this box: it repeats /data/d.txt line 1"}}
    wrong = data["findings"][2]
    assert wrong["evidence"] == {"box": [0, 0, 100, 100], "class": "dog", "confidence": 0.8, "iou": 1.0}
    assert wrong["fix"] == {"action": "change_class", "class": "dog", "text": "change the class to 'dog'"}
    missing = data["findings"][3]
    assert missing["annotation"] is None and missing["class"] == "dog"
    assert missing["fix"] == {"action": "add_box", "class": "dog", "box": [50, 0, 150, 100],
                              "text": "add a 'dog' box at [50.0, 0.0, 150.0, 100.0]"}

    rows = list(csv.DictReader((tmp_path / "audit.csv").open()))
    assert [r["type"] for r in rows] == kinds
    assert rows[2] == {"rank": "3", "score": "0.800000", "type": "wrong_class", "image": "/data/b.jpg",
                       "annotation": "0", "where": "/data/b.txt line 1", "class": "cat", "x1": "0.0", "y1": "0.0",
                       "x2": "100.0", "y2": "100.0", "evidence_class": "dog", "evidence_confidence": "0.800000",
                       "evidence_iou": "1.0000", "fix": "change the class to 'dog'"}
    assert rows[3]["annotation"] == "" and rows[3]["x1"] == "50.0"


def test_a_failure_while_writing_leaves_neither_file(the_set, tmp_path, monkeypatch):
    samples, predictions = the_set
    audit = audit_predictions(samples, predictions, NAMES, 0.5, 0.01)

    def broken(audit):
        raise RuntimeError("disk full")

    monkeypatch.setattr(label_audit, "audit_csv", broken)
    with pytest.raises(RuntimeError):
        write_audit(audit, {}, str(tmp_path / "audit.json"), str(tmp_path / "audit.csv"))
    assert list(tmp_path.iterdir()) == []


def test_a_finding_survives_the_shard_file(the_set):
    """What an audit shard holds of a finding (JSON) reads back as the same finding, of every type."""
    from executor.pipeline.audit_shards import finding_of, finding_record

    samples, predictions = the_set
    found = [f.finding for f in audit_predictions(samples, predictions, NAMES, 0.5, 0.01).findings]
    assert {f.kind for f in found} >= {"missing", "wrong_class", "spurious"}
    assert [finding_of(json.loads(json.dumps(finding_record(f)))) for f in found] == found
