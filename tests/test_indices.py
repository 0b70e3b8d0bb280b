"""SBRT quality indices against closed forms: a sphere in a spherically symmetric dose.

The PTV is a sphere of R = 20 mm contoured on 1 mm planes; the dose is
D(r) = Rx * A * exp(-k (r/R)^p) with A = 1.12, g(R) = 1.04 (k = ln(A/1.04)) and p = 4, smooth
everywhere, so trilinear interpolation on the 2 mm grid is close to it. Then, with
r_x = R (ln(A/x) / k)^(1/p) the radius of the x isodose (x a fraction of Rx):

- PIV = 4/3 pi r_1^3, PIV50% = 4/3 pi r_0.5^3 (the body outline holds both);
- the PTV lies inside the Rx isodose (D >= 1.04 Rx on it), so TV_PIV = TV, the PTV's
  volume under the slab convention (shapes.slab_volume of the written contours);
- Paddick CI = TV / PIV, RTOG CI = PIV / TV, GI = (r_0.5 / r_1)^3, R50% = PIV50% / TV;
- HI: a fraction f of a sphere's volume lies within R f^(1/3), so D_v% = D(R (1 - v/100)^(1/3))
  with D2%, D98% and D50% from that;
- D2cm = D(R + 20 mm): the slab surface of the contours lies within delta of the sphere
  (delta measured from the planes), so D2cm lies between D(R + 20 + delta) and D(R + 20 - delta).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sbrt_check.geometry import SlabShape
from sbrt_check.surfaces import surface_points
from tests.fixtures import shapes
from tests.fixtures.dicom_writer import DoseSpec, PlanSpec, RoiSpec, quantize_planes, write_plan_folder
from tests.test_rules_plan import row, run_check

RX, R, A, P = 40.0, 20.0, 1.12, 4.0
K = math.log(A / 1.04)
STEP = 2.0
AXIS = np.arange(-70.0, 70.0 + 1e-9, STEP)


def g(r: np.ndarray | float) -> np.ndarray | float:
    """Dose / Rx at radius r (mm)."""
    return A * np.exp(-K * (np.asarray(r) / R) ** P)


def isodose_radius(x: float) -> float:
    return R * (math.log(A / x) / K) ** (1 / P)


def ptv_planes() -> dict:
    return quantize_planes(shapes.sphere((0.0, 0.0, 0.0), R, np.arange(-25.0, 25.5, 1.0), n=256))


def write_sphere_plan(folder: Path, with_body: bool = True) -> Path:
    z, y, x = np.meshgrid(AXIS, AXIS, AXIS, indexing="ij")
    dose = RX * g(np.sqrt(x**2 + y**2 + z**2))
    rois = [RoiSpec("PTV", ptv_planes(), "PTV")]
    if with_body:
        body = shapes.cylinder((0.0, 0.0, 0.0), 60.0, 130.0, np.arange(-64.0, 64.5, 2.0), n=256)
        rois.append(RoiSpec("Body", quantize_planes(body), "EXTERNAL"))
    spec = PlanSpec("SYNTH-SPHERE", "Synthetic^Sphere", "SPHERE", RX, 5, rois,
                    DoseSpec(dose, AXIS[0], AXIS[0], list(AXIS), STEP, STEP), seed=f"sphere-{with_body}")
    write_plan_folder(folder, spec)
    return folder


def protocol(folder: Path, limits: dict | None = None, body: str | None = None) -> Path:
    limits = limits or {}
    within = {"body": body} if body else {}  # default: over the whole dose grid
    rules = [{"rule": "index", "index": name, **within, **limits.get(name, {})}
             for name in ("paddick_ci", "rtog_ci", "gradient_index", "r50", "d2cm", "hi")]
    data = {
        "name": "indices", "version": "1",
        "structures": {"PTV": {"match": ["PTV"]}, "Body": {"match": ["Body"], "required": False}},
        "constraints": [], "rules": rules,
    }
    path = folder / "indices.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def sphere_plans(tmp_path_factory) -> dict[str, Path]:
    return {
        "body": write_sphere_plan(tmp_path_factory.mktemp("sphere_body")),
        "grid": write_sphere_plan(tmp_path_factory.mktemp("sphere_grid"), with_body=False),
    }


@pytest.fixture(scope="module")
def truth() -> dict[str, float]:
    tv = shapes.slab_volume(ptv_planes()) / 1000.0
    r1, r50 = isodose_radius(1.0), isodose_radius(0.5)
    piv, piv50 = 4 / 3 * math.pi * r1**3 / 1000, 4 / 3 * math.pi * r50**3 / 1000
    d2, d98, d50 = (float(g(R * f ** (1 / 3))) for f in (0.02, 0.98, 0.50))  # D2%: the inner 2 % of the volume
    return {
        "tv": tv, "piv": piv, "piv50": piv50,
        "Paddick CI": tv / piv, "RTOG CI": piv / tv, "Gradient index": (r50 / r1) ** 3, "R50%": piv50 / tv,
        "HI": (d2 - d98) / d50,
    }


@pytest.mark.parametrize("over", ["body", "grid"])
def test_volume_indices_match_the_closed_forms(monkeypatch, capsys, tmp_path, sphere_plans, truth, over):
    path = protocol(tmp_path, body="Body" if over == "body" else None)
    code, report = run_check(monkeypatch, capsys, str(sphere_plans[over]), "--protocol", str(path))
    assert code == 0
    paddick = row(report, "Paddick CI")
    assert paddick["details"]["tv_cc"] == pytest.approx(truth["tv"], rel=1e-3)
    assert paddick["details"]["tv_piv_cc"] == pytest.approx(truth["tv"], rel=2e-3)
    assert paddick["details"]["piv_cc"] == pytest.approx(truth["piv"], rel=5e-3)
    assert paddick["details"]["piv50_cc"] == pytest.approx(truth["piv50"], rel=5e-3)
    assert paddick["details"]["over"].startswith("Body" if over == "body" else "whole dose grid")
    for name in ("Paddick CI", "RTOG CI", "Gradient index", "R50%"):
        result = row(report, name)
        assert result["value"] == pytest.approx(truth[name], rel=1e-2), name
        assert (result["status"], result["pass"], result["group"]) == ("pass", "report only", "indices")


def test_homogeneity_index_matches_the_closed_form(monkeypatch, capsys, tmp_path, sphere_plans, truth):
    _, report = run_check(monkeypatch, capsys, str(sphere_plans["body"]), "--protocol", str(protocol(tmp_path)))
    hi = row(report, "HI")
    assert hi["details"]["d50_gy"] == pytest.approx(RX * float(g(R * 0.5 ** (1 / 3))), rel=2e-3)
    assert hi["value"] == pytest.approx(truth["HI"], abs=3e-3)


def test_d2cm_lies_within_the_slab_bounds_of_the_closed_form(monkeypatch, capsys, tmp_path, sphere_plans):
    planes = ptv_planes()
    z = np.array(sorted(planes))
    shape = SlabShape.from_planes(planes, 1.0)
    radii = np.linalg.norm(surface_points(shape, 0.5), axis=1)
    delta = float(np.abs(radii - R).max())
    assert delta < 0.75 and len(z) == 39
    _, report = run_check(monkeypatch, capsys, str(sphere_plans["body"]), "--protocol", str(protocol(tmp_path)))
    d2cm = row(report, "D2cm")
    low, high = 100 * float(g(R + 20 + delta)), 100 * float(g(R + 20 - delta))
    assert d2cm["unit"] == "% Rx" and low <= d2cm["value"] <= high
    assert d2cm["value"] == pytest.approx(100 * float(g(R + 20)), abs=0.6)  # the bound is about +-1 %Rx


def test_index_limits_judge_the_value(monkeypatch, capsys, tmp_path, sphere_plans, truth):
    limits = {"rtog_ci": {"pass": "< 1.2"}, "gradient_index": {"pass": "< 4", "variation": "< 5"},
              "r50": {"pass": "< 3"}}
    code, report = run_check(monkeypatch, capsys, str(sphere_plans["body"]),
                             "--protocol", str(protocol(tmp_path, limits)))
    # RTOG CI ~ (22.24/20)^3 = 1.37 fails < 1.2; GI = (36.3/22.2)^3 ~ 4.3 is a variation; R50 ~ 5.9 fails.
    assert row(report, "RTOG CI")["status"] == "fail" and row(report, "RTOG CI")["margin"] == pytest.approx(
        1.2 - truth["RTOG CI"], abs=0.02)
    assert row(report, "Gradient index")["status"] == "variation"
    assert row(report, "R50%")["status"] == "fail" and code == 1 and report["verdict"] == "fail"
