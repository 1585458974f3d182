"""`sspir eval` end to end: pairing, skips, JSON schema, sizes, protocol, pictures, --restore, learned metrics."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sspir_core.cli import main
from sspir_core.evaluation import METRICS, WeightsConfig, evaluate, pair_images
from sspir_core.evaluation.fidelity import psnr_y
from sspir_core.evaluation.protocol import Protocol

skdata = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "examples" / "eval"


def save(folder: Path, name: str, u8: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(u8).save(folder / name)
    return folder / name


@pytest.fixture
def photo_set(tmp_path):
    """GT crops of two photos; predictions with known damage; one image without GT, one without prediction."""
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for name, img in (("astronaut", skdata.astronaut()[100:164, 180:244]), ("coffee", skdata.coffee()[:64, :64])):
        save(gt_dir, f"{name}.png", img)
        noisy = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        save(pred_dir, f"{name}.png", noisy)  # same stem, any format
    save(pred_dir, "extra.png", skdata.chelsea()[:64, :64])
    save(gt_dir, "lonely.png", skdata.rocket()[:64, :64])
    return tmp_path


def run_json(args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / "scores.json"
    assert main(["eval", "--json", str(out), *args]) == 0  # --restore takes every flag after it
    return json.loads(out.read_text())


def test_json_schema_means_and_missing_partners(photo_set, tmp_path, capsys):
    empty = tmp_path / "no-weights"
    doc = run_json(
        ["--gt", str(photo_set / "gt"), "--pred", str(photo_set / "pred"), "--weights-dir", str(empty)], tmp_path
    )
    assert set(doc) >= {"images", "mean", "skipped", "missing"}
    assert sorted(doc["images"]) == ["astronaut", "coffee"]
    assert doc["missing"] == {"gt": ["extra"], "pred": ["lonely"]}
    for row in doc["images"].values():
        assert set(row) == {"psnr_y", "ssim_y"} and 20 < row["psnr_y"] < 40 and 0 < row["ssim_y"] < 1
    for metric in ("psnr_y", "ssim_y"):
        assert doc["mean"][metric] == pytest.approx(np.mean([r[metric] for r in doc["images"].values()]))
    err = capsys.readouterr().err
    assert "no ground truth: extra" in err and "no restored image: lonely" in err


def test_missing_weights_are_listed_as_skipped_with_the_files(photo_set, tmp_path, capsys):
    empty = tmp_path / "no-weights"
    doc = run_json(
        ["--gt", str(photo_set / "gt"), "--pred", str(photo_set / "pred"), "--weights-dir", str(empty)], tmp_path
    )
    learned = [m for m in METRICS if m not in ("psnr_y", "ssim_y")]
    assert sorted(doc["skipped"]) == sorted(learned)
    needs = doc["skipped"]["lpips"]["needs"]
    assert str(empty / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth") in needs
    assert str(empty / "checkpoints" / "alexnet-owt-7be5be79.pth") in needs
    assert any("ViT-L-14" in f for f in doc["skipped"]["clip_sim"]["needs"])
    assert "skipped `fid`" in capsys.readouterr().out
    assert not any(empty.rglob("*")), "nothing may be downloaded into the weights folder"


def test_mismatched_sizes_are_a_clear_error_listing_every_pair(photo_set, capsys):
    save(photo_set / "pred", "coffee.png", skdata.coffee()[:60, :64])
    code = main(["eval", "--gt", str(photo_set / "gt"), "--pred", str(photo_set / "pred"), "--metrics", "psnr_y"])
    err = capsys.readouterr().err
    assert code == 2 and "coffee: restored image is 64x60 px but GT is 64x64 px" in err


def test_no_pair_at_all_and_bad_flags_are_errors(photo_set, tmp_path, capsys):
    other = tmp_path / "other"
    save(other, "zzz.png", skdata.coffee()[:32, :32])
    assert main(["eval", "--gt", str(photo_set / "gt"), "--pred", str(other)]) == 2
    assert "no image in --pred" in capsys.readouterr().err
    assert (
        main(["eval", "--gt", str(photo_set / "gt"), "--pred", str(photo_set / "pred"), "--metrics", "psnr,lpips"]) == 2
    )
    assert "--metrics: unknown psnr" in capsys.readouterr().err
    assert main(["eval", "--gt", str(tmp_path / "nope"), "--pred", str(photo_set / "pred")]) == 2
    assert "--gt: folder not found" in capsys.readouterr().err


def test_realsr_protocol_scores_the_aligned_512_centre_crop(tmp_path):
    """GT 520x524: the crop starts at 4 * ((130 - 128) // 2) = 4 rows and 4 * ((131 - 128) // 2) = 4 columns."""
    gt = np.asarray(Image.fromarray(skdata.astronaut()).resize((524, 520)))
    pred = gt.copy()
    pred[:4] = 0  # outside the scored box
    pred[200:210, 200:210] = 255  # inside it
    save(tmp_path / "gt", "a.png", gt)
    save(tmp_path / "pred", "a.png", pred)
    cropped = np.ascontiguousarray(pred[4:516, 4:516])
    save(tmp_path / "pred512", "a.png", cropped)  # restored from the LQ crop: already 512 px
    expected = psnr_y(
        torch.from_numpy(pred[4:516, 4:516] / 255.0).permute(2, 0, 1)[None],
        torch.from_numpy(gt[4:516, 4:516] / 255.0).permute(2, 0, 1)[None],
    )
    weights = WeightsConfig(tmp_path / "w")
    for pred_dir in ("pred", "pred512"):
        result = evaluate(
            pair_images(tmp_path / pred_dir, tmp_path / "gt"), ["psnr_y"], weights, protocol=Protocol("realsr")
        )
        assert result.images["a"]["psnr_y"] == pytest.approx(expected)
    lq = torch.zeros(1, 3, 130, 131)
    lq[..., 1:129, 1:129] = 1
    assert Protocol("realsr").crop_lq(lq, "lq").min() == 1  # LQ box at (1, 1) = GT box / 4
    save(tmp_path / "small", "a.png", gt[:500])
    assert (
        main(["eval", "--gt", str(tmp_path / "small"), "--pred", str(tmp_path / "small"), "--protocol", "realsr"]) == 2
    )


def test_pictures_csv_and_markdown(photo_set, tmp_path):
    lq_dir = tmp_path / "lq"
    for name in ("astronaut", "coffee"):
        img = np.asarray(Image.open(photo_set / "gt" / f"{name}.png").resize((16, 16)))
        save(lq_dir, f"{name}.png", img)
    pics, csv_file, md = tmp_path / "pics", tmp_path / "s.csv", tmp_path / "s.md"
    assert (
        main(
            [
                "eval",
                "--gt",
                str(photo_set / "gt"),
                "--pred",
                str(photo_set / "pred"),
                "--lq",
                str(lq_dir),
                "--metrics",
                "psnr_y,ssim_y",
                "--pictures",
                str(pics),
                "--csv",
                str(csv_file),
                "--markdown",
                str(md),
                "--rank-by",
                "ssim_y",
            ]
        )
        == 0
    )
    best, worst = Image.open(pics / "best_ssim_y.png"), Image.open(pics / "worst_ssim_y.png")
    assert best.width == 3 * 64 + 2 * 4 and best.height > 64  # LQ | restored | GT
    assert worst.size == best.size
    assert Image.open(pics / "distribution.png").height > 0
    rows = csv_file.read_text().splitlines()
    assert rows[0] == "image,psnr_y,ssim_y" and rows[-1].startswith("mean,") and len(rows) == 4
    table = md.read_text()
    assert "| psnr_y ↑ |" in table and "| **mean** |" in table


@pytest.mark.slow  # restores then evaluates a folder
def test_eval_restore_chains_and_times_each_image(tmp_path):
    gt = skdata.astronaut()[100:164, 180:244]
    save(tmp_path / "gt", "astronaut.png", gt)
    save(tmp_path / "lq", "astronaut.png", np.asarray(Image.fromarray(gt).resize((16, 16), Image.Resampling.BICUBIC)))
    pred = tmp_path / "pred"
    doc = run_json(
        [
            "--gt",
            str(tmp_path / "gt"),
            "--lq",
            str(tmp_path / "lq"),
            "--pred",
            str(pred),
            "--metrics",
            "psnr_y",
            "--weights-dir",
            str(tmp_path / "w"),
            "--restore",
            "--preset",
            "tiny-random",
            "--steps",
            "2",
            "--tile",
            "0",
        ],
        tmp_path,
    )
    assert list(doc["images"]) == ["astronaut"] and [p.name for p in pred.iterdir()] == ["astronaut.png"]
    row = doc["images"]["astronaut"]
    assert row["time_s"] > 0 and math.isfinite(row["psnr_y"]) and doc["mean"]["time_s"] == row["time_s"]
    assert main(["eval", "--gt", str(SAMPLES / "gt"), "--pred", str(pred), "--restore", "--preset", "tiny-random"]) == 2
    assert (
        main(
            [
                "eval",
                "--gt",
                str(SAMPLES / "gt"),
                "--lq",
                str(SAMPLES / "lq"),
                "--pred",
                str(pred),
                "--restore",
                "--preset",
                "tiny-random",
                "--json",
                "x.json",
            ]
        )
        == 2
    )  # eval flags after --restore


def _niqe_params() -> Path | None:
    env = os.environ.get("SSPIR_NIQE_PARAMS")
    if env:
        return Path(env)
    import torch.hub

    path = Path(os.environ.get("SSPIR_EVAL_WEIGHTS", torch.hub.get_dir())) / "niqe_pris_params.npz"
    return path if path.is_file() else None


def test_niqe_with_basicsr_params_ranks_noise_worse(tmp_path):
    pytest.importorskip("pyiqa")
    params = _niqe_params()
    if params is None:
        if os.environ.get("SSPIR_REQUIRE_NIQE", "") not in ("", "0"):  # CI fetches them: absent there is a failure
            pytest.fail("NIQE params not on disk although SSPIR_REQUIRE_NIQE is set (scripts/fetch_niqe_params.sh)")
        pytest.skip("NIQE params not on disk: run scripts/fetch_niqe_params.sh (CI does)")
    clean = skdata.astronaut()[64:320, 128:384]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    save(tmp_path / "gt", "a.png", clean)
    save(tmp_path / "gt", "b.png", clean)
    save(tmp_path / "pred", "a.png", clean)
    save(tmp_path / "pred", "b.png", noisy)
    result = evaluate(
        pair_images(tmp_path / "pred", tmp_path / "gt"), ["niqe"], WeightsConfig(tmp_path / "w", niqe_params=params)
    )
    assert not result.skipped
    a, b = result.images["a"]["niqe"], result.images["b"]["niqe"]
    assert 0 < a < b  # NIQE: lower is more natural


def shifted(u8: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, float]:
    """``u8`` with +-k grey levels on every channel, and its PSNR on Y by hand: Y moves by exactly k * 219/255."""
    gt = np.clip(u8, 10, 245).astype(np.int16)
    sign = np.random.default_rng(seed).choice([-1, 1], size=gt.shape[:2])[..., None]
    return (gt + k * sign).astype(np.uint8), 10 * math.log10(255**2 / (k * 219 / 255) ** 2)


def test_an_image_too_small_for_ssim_is_named_and_skipped_the_rest_is_scored(photo_set, tmp_path, capsys):
    tiny_gt = np.clip(skdata.rocket()[100:108, 100:108], 10, 245).astype(np.uint8)
    tiny_pred, tiny_psnr = shifted(tiny_gt, 5, seed=3)
    save(photo_set / "gt", "tiny.png", tiny_gt)
    save(photo_set / "pred", "tiny.png", tiny_pred)
    md = tmp_path / "s.md"
    doc = run_json(
        [
            "--gt",
            str(photo_set / "gt"),
            "--pred",
            str(photo_set / "pred"),
            "--metrics",
            "psnr_y,ssim_y",
            "--markdown",
            str(md),
            "--pictures",
            str(tmp_path / "pics"),
            "--rank-by",
            "ssim_y",
        ],
        tmp_path,
    )
    assert sorted(doc["images"]) == ["astronaut", "coffee", "tiny"]
    assert doc["images"]["tiny"] == {"psnr_y": pytest.approx(tiny_psnr, abs=1e-4)}  # PSNR still scored
    for name in ("astronaut", "coffee"):
        assert 0 < doc["images"][name]["ssim_y"] < 1
    reason = "smaller than SSIM's 11x11 window after the border crop"
    assert doc["not_scored"] == {"tiny": {"ssim_y": {"reason": reason, "detail": "8x8 px after a 0 px border crop"}}}
    assert doc["not_scored_summary"] == {"ssim_y": {"images": 1, "of": 3, "reasons": {reason: ["tiny"]}}}
    assert doc["mean"]["ssim_y"] == pytest.approx(
        (doc["images"]["astronaut"]["ssim_y"] + doc["images"]["coffee"]["ssim_y"]) / 2
    )
    assert doc["mean"]["psnr_y"] == pytest.approx(np.mean([r["psnr_y"] for r in doc["images"].values()]))
    captured = capsys.readouterr()
    assert f"tiny: ssim_y not scored: {reason} (8x8 px" in captured.err
    assert f"`ssim_y` not scored for 1 of 3 image(s), {reason}: tiny (its mean is over the other 2)" in md.read_text()
    assert (tmp_path / "pics" / "worst_ssim_y.png").is_file()  # ranking skips the image without a value

    # a border crop that leaves nothing of the tiny image: both metrics skip it, the others are scored
    doc = run_json(
        [
            "--gt",
            str(photo_set / "gt"),
            "--pred",
            str(photo_set / "pred"),
            "--metrics",
            "psnr_y,ssim_y",
            "--crop-border",
            "4",
        ],
        tmp_path,
    )
    assert doc["images"]["tiny"] == {}
    assert set(doc["not_scored"]["tiny"]) == {"psnr_y", "ssim_y"}
    assert doc["not_scored"]["tiny"]["psnr_y"]["reason"] == "--crop-border 4 leaves nothing of the image"
    assert all(0 < doc["images"][n]["ssim_y"] < 1 for n in ("astronaut", "coffee"))


@pytest.fixture
def nested_set(tmp_path):
    """GT and restored trees: top-level a, city/b, city/night/c (restored copies shifted by known amounts)."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    psnr = {}
    for i, (name, img) in enumerate(
        (
            ("a", skdata.astronaut()[:48, :48]),
            ("city/b", skdata.coffee()[:48, :48]),
            ("city/night/c", skdata.chelsea()[:48, :48]),
        )
    ):
        gt = np.clip(img, 10, 245).astype(np.uint8)
        pred, psnr[name] = shifted(gt, 2 + i, seed=i)
        save(gt_dir / Path(name).parent, f"{Path(name).name}.png", gt)
        save(pred_dir / Path(name).parent, f"{Path(name).name}.png", pred)
    save(gt_dir / "city", "only_gt.jpg", skdata.rocket()[:48, :48])
    return gt_dir, pred_dir, psnr


def test_images_in_subfolders_are_counted_in_a_warning(nested_set, tmp_path, capsys):
    gt_dir, pred_dir, psnr = nested_set
    doc = run_json(["--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "psnr_y"], tmp_path)
    assert list(doc["images"]) == ["a"] and doc["images"]["a"]["psnr_y"] == pytest.approx(psnr["a"], abs=1e-4)
    assert doc["in_subfolders"] == {"gt": {"city": 2, "city/night": 1}, "pred": {"city": 1, "city/night": 1}}
    out = capsys.readouterr()
    assert (
        f"warning: --gt: 3 image(s) in subfolders of {gt_dir} are not paired: city/ (2), city/night/ (1); "
        "pass --recursive to pair them by relative path"
    ) in out.err
    assert f"warning: --pred: 2 image(s) in subfolders of {pred_dir} are not paired" in out.err
    assert "not paired: 3 image(s) in subfolders of --gt (city, city/night)" in out.out  # the Markdown notes
    # nothing at the top level: the "no pair" error points at --recursive
    assert main(["eval", "--gt", str(gt_dir / "city"), "--pred", str(pred_dir)]) == 2
    assert "pass --recursive" in capsys.readouterr().err


def test_recursive_pairs_by_relative_path(nested_set, tmp_path, capsys):
    gt_dir, pred_dir, psnr = nested_set
    doc = run_json(
        ["--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "psnr_y,ssim_y", "--recursive"], tmp_path
    )
    assert list(doc["images"]) == ["a", "city/b", "city/night/c"]
    for name, expected in psnr.items():
        assert doc["images"][name]["psnr_y"] == pytest.approx(expected, abs=1e-4)
    assert doc["missing"] == {"pred": ["city/only_gt"]} and doc["in_subfolders"] == {}
    assert "warning: 1 image(s) with no restored image: city/only_gt" in capsys.readouterr().err
    # same stem in two subfolders is two names; --restore reads one level, so it refuses --recursive
    save(gt_dir / "other", "b.png", skdata.coffee()[:48, :48])
    save(pred_dir / "other", "b.png", skdata.coffee()[:48, :48])
    doc = run_json(["--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "psnr_y", "--recursive"], tmp_path)
    assert "other/b" in doc["images"] and "city/b" in doc["images"]
    assert (
        main(
            [
                "eval",
                "--gt",
                str(gt_dir),
                "--pred",
                str(pred_dir),
                "--lq",
                str(gt_dir),
                "--recursive",
                "--restore",
                "--preset",
                "tiny-random",
            ]
        )
        == 2
    )
    assert "--recursive cannot be combined with --restore" in capsys.readouterr().err


def test_an_unreadable_image_fails_that_pair_alone(tmp_path, capsys):
    """A restored file that is not an image (header) and a GT cut off mid-data (pixels): those two pairs are named
    on stderr and under "failed", the third is scored; exit 1 says something failed, the JSON is still written."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    good_gt = np.clip(skdata.astronaut()[:48, :48], 10, 245).astype(np.uint8)
    good_pred, good_psnr = shifted(good_gt, 3, seed=0)
    save(gt_dir, "good.png", good_gt)
    save(pred_dir, "good.png", good_pred)
    save(gt_dir, "notimage.png", skdata.coffee()[:48, :48])
    (pred_dir / "notimage.png").write_bytes(b"this is not a PNG")
    cut = save(gt_dir, "cut.png", skdata.chelsea()[:48, :48])
    cut.write_bytes(cut.read_bytes()[:-2000])  # the header is intact, the pixel data is not
    save(pred_dir, "cut.png", skdata.chelsea()[:48, :48])
    out = tmp_path / "scores.json"
    code = main(["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "psnr_y", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    doc = json.loads(out.read_text())
    assert list(doc["images"]) == ["good"] and doc["images"]["good"]["psnr_y"] == pytest.approx(good_psnr, abs=1e-4)
    assert doc["mean"]["psnr_y"] == pytest.approx(good_psnr, abs=1e-4)  # over the scored pair only
    assert list(doc["failed"]) == ["cut", "notimage"]
    assert doc["failed"]["notimage"]["file"] == str(pred_dir / "notimage.png")
    assert doc["failed"]["cut"]["file"] == str(gt_dir / "cut.png")
    assert "truncated" in doc["failed"]["cut"]["error"]
    assert f"error: notimage: not scored: {pred_dir / 'notimage.png'}: cannot read image" in err
    assert f"error: cut: not scored: {gt_dir / 'cut.png'}" in err
    assert "2 of 3 pair(s) could not be read" in err


def test_infinite_psnr_and_not_scored_are_distinct_in_the_json(tmp_path):
    """Identical pair: PSNR "Infinity" (a string standard parsers read), left out of the mean and listed under
    "infinite"; a metric that scored nothing: mean null and the image under "not_scored"."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    same = np.clip(skdata.astronaut()[:8, :8], 10, 245).astype(np.uint8)
    other = np.clip(skdata.coffee()[:8, :8], 10, 245).astype(np.uint8)
    other_pred, other_psnr = shifted(other, 4, seed=1)
    save(gt_dir, "same.png", same)
    save(pred_dir, "same.png", same)
    save(gt_dir, "other.png", other)
    save(pred_dir, "other.png", other_pred)
    out = tmp_path / "scores.json"
    assert (
        main(["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "psnr_y,ssim_y", "--json", str(out)])
        == 0
    )
    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} is not JSON"))
    assert doc["images"]["same"] == {"psnr_y": "Infinity"} and float(doc["images"]["same"]["psnr_y"]) == math.inf
    assert doc["images"]["other"]["psnr_y"] == pytest.approx(other_psnr, abs=1e-4)
    assert doc["infinite"] == {"psnr_y": ["same"]}
    assert doc["mean"]["psnr_y"] == pytest.approx(other_psnr, abs=1e-4)  # the finite values' mean
    assert doc["mean"]["ssim_y"] is None  # 8x8 is below SSIM's window: nothing scored
    assert set(doc["not_scored"]) == {"same", "other"} and doc["failed"] == {}

    save(pred_dir, "other.png", other)  # now every image is identical: the mean is infinite too
    assert main(["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "psnr_y", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["mean"] == {"psnr_y": "Infinity"} and doc["infinite"] == {"psnr_y": ["other", "same"]}


def test_markdown_mean_of_nothing_scored_is_empty_not_stars(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for name, img in (("a", skdata.astronaut()[:8, :8]), ("b", skdata.coffee()[:8, :8])):
        save(gt_dir, f"{name}.png", img)
        save(pred_dir, f"{name}.png", img)
    assert main(["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "psnr_y,ssim_y"]) == 0
    out = capsys.readouterr().out
    assert "****" not in out
    assert "| **mean** | **inf** |  |" in out
    assert "`psnr_y` is infinite (identical to GT) for 2 image(s): a, b (so is its mean)" in out


def test_a_crop_border_that_leaves_nothing_is_an_error_before_scoring(photo_set, tmp_path, capsys, monkeypatch):
    import sspir_core.evaluation.runner as runner

    def no_scoring(*args, **kwargs):
        raise AssertionError("scorers were built: the crop border must be refused before")

    monkeypatch.setattr(runner, "build_scorers", no_scoring)
    save(photo_set / "gt", "small.png", skdata.rocket()[:20, :30])
    save(photo_set / "pred", "small.png", skdata.rocket()[:20, :30])
    out = tmp_path / "scores.json"
    code = main(
        [
            "eval",
            "--gt",
            str(photo_set / "gt"),
            "--pred",
            str(photo_set / "pred"),
            "--crop-border",
            "1000000",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and not out.exists() and "****" not in captured.out
    assert (
        "error: --crop-border 1000000 leaves nothing to score: it drops 1000000 px on each side, and the smallest "
        "image is 30x20 px (small), the largest 64x64 px (coffee); --crop-border 31 or less leaves something of "
        "the largest, 9 or less of every image"
    ) in captured.err
    # 32 leaves nothing of 64 px either (2 x 32 = 64): still refused; 31 leaves 2 px of the 64 px images
    assert main(["eval", "--gt", str(photo_set / "gt"), "--pred", str(photo_set / "pred"), "--crop-border", "32"]) == 2
    monkeypatch.undo()
    doc = run_json(
        [
            "--gt",
            str(photo_set / "gt"),
            "--pred",
            str(photo_set / "pred"),
            "--metrics",
            "psnr_y",
            "--crop-border",
            "31",
        ],
        tmp_path,
    )
    assert set(doc["not_scored"]) == {"small"} and {"astronaut", "coffee"} <= set(doc["images"])
