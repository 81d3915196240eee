"""stepx study: templates with roles, phrase grouping, per-run numbers by the phases'
definitions, bootstrap intervals, the report on the embedded model, and Ray = in-process."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from bridge.analysis.study import StudySettings, TaggedPhrases, parse_line, read_prompts, run_study, write_report
from bridge.analysis.study.prompts import align_roles
from bridge.analysis.study.report import bootstrap_mean, unit_rows
from bridge.phases.measures import localisation_steps

LINE = "a red/attribute circle/object above/preposition a blue/attribute square/object on a yellow/attribute background/background"


def test_templates_parse_with_roles_and_refuse_unknown_roles(tmp_path):
    p = parse_line(LINE)
    assert p.text == "a red circle above a blue square on a yellow background"
    assert p.roles[:3] == ("other", "attribute", "object")
    with pytest.raises(ValueError, match="unknown role 'colour'"):
        parse_line("a red/colour circle")
    f = tmp_path / "p.txt"
    f.write_text("# comment\n\n" + LINE + "\na bad/role\n")
    with pytest.raises(ValueError, match=r"p.txt:4: unknown role"):
        read_prompts(f)
    assert align_roles(p, ["a", "red", "circle", ",", "above"]) == ["other", "attribute", "object", "other", "preposition"]


def test_noun_phrases_take_attributes_and_the_determiner():
    p = parse_line(LINE)
    groups = TaggedPhrases().phrases(list(p.words), list(p.roles))
    assert [g for g, _ in groups] == ["a red circle", "a blue square", "a yellow background"]
    assert groups[0][1] == [0, 1, 2]


def test_localisation_step_and_bootstrap():
    agreement = np.array([[0.2, 0.95], [0.95, 0.5], [0.8, 0.95], [1.0, 1.0]])
    assert localisation_steps(agreement, np.arange(4), 0.9).tolist() == [3, 2]
    m, lo, hi = bootstrap_mean(np.array([1.0, 2.0, 3.0, 4.0, math.nan]), np.array([0, 0, 1, 1, 1]))
    assert m == 2.5 and 1.5 <= lo <= m <= hi <= 3.5
    assert math.isnan(bootstrap_mean(np.array([math.nan]), np.array([0]))[0])


@pytest.fixture(scope="module")
def results():
    settings = StudySettings(steps=6)
    return run_study(settings, [parse_line(LINE)], seeds=2)


def test_study_on_the_embedded_model_uses_the_timeline_definitions(results, tmp_path):
    assert [r.seed for r in results] == [0, 1]
    r = results[0]
    assert r.words.names[:3] == ["a", "red", "circle"] and r.words.roles[2] == "object"
    assert r.phrases.names == ["red circle", "blue square", "yellow background"]  # the TITAN handler's phrases
    assert r.phrases.roles == ["object", "object", "background"]
    s = r.words.summary  # a PhaseEngine's TimelineSummary: the same numbers as the timeline packet
    assert s.series["mass"].shape == (6, len(r.words.names))
    assert np.allclose(s.auc, s.series["mass"].astype(np.float64).mean(0))
    assert np.allclose(r.words.agreement[-1], 1.0)
    assert set(r.block_mass) >= {"down_blocks.0", "mid_block", "up_blocks.1"}
    mid = [k for k in r.layer_mass if k.startswith("mid_block")]
    assert mid and np.allclose(r.block_mass["mid_block"], np.mean([r.layer_mass[k] for k in mid], axis=0))
    rows = unit_rows(r, 0, r.words)
    assert rows[2]["stabilised_step"] == int(s.stabilisation_step[2])
    files = write_report(results, tmp_path / "rep", {"model": "shapes"}, k=2)
    names = {f.name for f in files}
    assert {"report.md", "words.csv", "phrases.csv", "topk.csv", "blocks.csv", "layers.csv", "timings.png", "agreement.png"} <= names
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| background |" in md and "Attribute − noun" in md
    topk = list(csv.DictReader(open(tmp_path / "rep" / "topk.csv")))
    assert len(topk) == 2 * 6 * 2 and topk[0]["rank"] == "1"
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:4] == b"\x89PNG"


def test_the_command_refuses_to_overwrite_a_report(tmp_path, capsys):
    from bridge.cli import main

    (tmp_path / "report.md").write_text("mine")
    prompts = tmp_path / "p.txt"
    prompts.write_text(LINE + "\n")
    assert main(["study", str(prompts), "--seeds", "1", "-o", str(tmp_path)]) == 2
    assert "already holds a study report" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "mine"
    bad = tmp_path / "bad.txt"
    bad.write_text("a red/colour circle\n")
    assert main(["study", str(bad), "--seeds", "1", "-o", str(tmp_path / "new")]) == 2
    assert "unknown role 'colour'" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_workers_give_the_same_numbers(results):
    ray_results = run_study(StudySettings(steps=6), [parse_line(LINE)], seeds=2, workers=2)
    for a, b in zip(results, ray_results):
        assert a.seed == b.seed
        np.testing.assert_allclose(a.words.summary.series["mass"], b.words.summary.series["mass"], rtol=1e-5)
        assert a.words.summary.stabilisation_step.tolist() == b.words.summary.stabilisation_step.tolist()


def test_attribute_noun_pairs_split_by_the_noun_role():
    from bridge.analysis.study.report import TIMINGS, attribute_vs_noun

    def row(run, i, role, frac):
        return {"run": run, "index": i, "role": role, **{f"{t}_frac": frac for t in TIMINGS}}

    rows = [row(0, 0, "other", 0.5), row(0, 1, "attribute", 0.2), row(0, 2, "attribute", 0.3), row(0, 3, "object", 0.4),
            row(0, 4, "preposition", 0.9), row(0, 5, "attribute", 0.1), row(0, 6, "background", 0.8),
            row(1, 0, "attribute", 0.5), row(1, 1, "object", 0.5)]
    objects = attribute_vs_noun(rows)
    assert objects["stabilised"][0] == pytest.approx(((0.2 - 0.4) + (0.3 - 0.4) + 0.0) / 3)
    assert attribute_vs_noun(rows, ("background",))["peak"][0] == pytest.approx(0.1 - 0.8)
