from __future__ import annotations

import json
import math

from quad_doctor.findings import CheckRun, Finding, Report, Severity, rank_findings
from quad_doctor.reports.json import render


def test_json_report_follows_schema_v1_and_has_no_nan(tmp_path):
    finding = Finding("loss-bounds", Severity.WARNING, "little room", {"floor": math.nan})
    report = Report(rank_findings([finding], {}), (CheckRun("loss-bounds", "fail", 0.5),))
    path = tmp_path / "sub" / "report.json"
    text = render(report, path)
    data = json.loads(path.read_text())
    assert data == json.loads(text)
    assert data["schema"] == "quad-doctor/report/v1"
    assert data["findings"][0]["rank"] == 1
    assert data["findings"][0]["evidence"] == {"floor": None}
    assert data["checks"] == [
        {"name": "loss-bounds", "status": "fail", "duration_s": 0.5, "message": ""}
    ]
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary left
