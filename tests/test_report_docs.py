"""The docs describe the inference the code runs: CR2 / HC2 covariance and the HTZ small-sample
test (Pustejovsky & Tipton 2018), not CR1 / HC0, and keep a section for the simulation grid."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_studies_doc_describes_cr2_and_htz_not_cr1():
    doc = (REPO / "docs" / "studies.md").read_text(encoding="utf-8")
    assert "CR2" in doc and "HC2" in doc and "HTZ" in doc and "Pustejovsky" in doc
    assert "### Small-sample inference (CR2 + HTZ)" in doc
    # CR1 / HC0 may be named as options, never as what the battery runs
    assert not re.search(r"cluster-robust \(CR1\)|robust \(HC0\)|\(CR1\) covariance", doc)
    # the GLM step of "The analyses" names the small-sample test it runs (the former
    # t(m - 1) rule may be described elsewhere as the comparison)
    glm_step = doc[doc.index("1. **GLM**") : doc.index("2. **Rank tests**")]
    assert "HTZ" in glm_step and "CR2" in glm_step and "CR1" not in glm_step


def test_report_schema_doc_names_the_covariance_the_code_reports():
    doc = (REPO / "docs" / "report-schema.md").read_text(encoding="utf-8")
    assert "cluster-robust CR2" in doc and "robust HC2" in doc
    assert "cluster-robust CR1 (750" not in doc and "`robust HC0`" not in doc
    assert "`wald_htz`" in doc and "`f_statistic`" in doc
