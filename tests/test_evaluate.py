"""Tests of evaluate.py: every metric it reports against torch-fidelity and prdc on the same
features; npz layouts and image folders; a dataset's files against a second npz; the IS/FID
sample.py reports; bad input refused before any work; both Inception networks.

Most tests stand in for the Inception network (its weights cannot be downloaded here):
`IndexedFeatures` returns chosen features, TinyInception (helpers.py) cheap real ones.
"""
import functools
import json
import re
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_sample import make_run, sample_args

import calculate_inception_moments as cim
import evaluate
import inception_utils as iu
import sample
from flags import run_cli
from helpers import TinyInception

pytestmark = [pytest.mark.filterwarnings('ignore::inception_utils.InceptionWeightsWarning'),
              pytest.mark.usefixtures('one_thread')]  # small matrices: threads only stall


class IndexedFeatures(torch.nn.Module):
    """A stand-in network: image i (its first pixel holds i // 256, i % 256) gets row i of
    fixed pool features and logits, so the metrics can be recomputed from those rows."""

    def __init__(self, pool: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.pool, self.logits = pool, logits
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # its device is the network's

    def forward(self, x):
        v = ((x[:, :2, 0, 0] + 1) * 127.5).round().long()  # [B, 2]
        rows = v[:, 0] * 256 + v[:, 1]
        return self.pool[rows], self.logits[rows]


def indexed_images(first: int, n: int, size: int = 4) -> np.ndarray:
    """uint8 [n, size, size, 3] images whose first pixels say their rows first, ..., first+n-1."""
    x = np.zeros((n, size, size, 3), np.uint8)
    rows = np.arange(first, first + n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = rows // 256, rows % 256
    return x


def random_images(n: int, seed: int, size: int = 16) -> np.ndarray:
    """uint8 [n, size, size, 3] noise images."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def weights_file(tmp_path):
    """Any existing file for --inception_weights (the stand-in networks load nothing)."""
    path = tmp_path / 'stand_in.pth'
    path.write_bytes(b'stand-in')
    return path


def stand_in(monkeypatch, net: torch.nn.Module) -> None:
    """Make inception_utils load `net` instead of Inception (checks of weights pass)."""
    monkeypatch.setattr(iu, 'load_inception_net', lambda *args, **kwargs: net)
    monkeypatch.setattr(iu, '_load_weights', lambda *args, **kwargs: None)


def evaluate_json(tmp_path, *argv) -> dict:
    """Run evaluate.py's main with --json and return what it wrote."""
    out = tmp_path / 'scores.json'
    assert evaluate.main([*map(str, argv), '--json', str(out)]) == 0
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- the metrics

def test_every_metric_equals_the_published_implementations(tmp_path, monkeypatch,
                                                           weights_file):
    """IS, FID, KID and precision/recall equal torch-fidelity's, density/coverage prdc's, and
    intra-class FID the mean of torch-fidelity's per-class FIDs, on the same features."""
    from prdc import compute_prdc
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    n_fake, n_real = 60, 50
    g = torch.Generator().manual_seed(0)
    pool = torch.zeros(n_fake + n_real, iu.POOL_DIM)  # 24 dimensions used: fast full rank
    pool[:, :24] = (torch.randn(n_fake + n_real, 24, generator=g) + 0.3).relu()
    pool[:n_fake, :24] *= 1.2
    logits = torch.randn(n_fake + n_real, 10, generator=g) * 3
    fake_y = np.arange(n_fake) % 3
    fake_y[-1] = 7  # a class with one sample: skipped
    real_y = np.arange(n_real) % 3
    np.savez(tmp_path / 'fake.npz', x=indexed_images(0, n_fake), y=fake_y)
    np.savez(tmp_path / 'real.npz', x=indexed_images(n_fake, n_real), y=real_y)
    stand_in(monkeypatch, IndexedFeatures(pool, logits))
    got = evaluate_json(tmp_path, tmp_path / 'fake.npz', '--ref', tmp_path / 'real.npz',
                        '--intra_fid', '--inception_weights', weights_file, '--batch_size', 16)

    fake, real = pool[:n_fake].double(), pool[n_fake:].double()
    IS = isc_features_to_metric(logits[:n_fake], splits=10, shuffle=False)
    assert (got['IS_mean'], got['IS_std']) == pytest.approx(
        (IS['inception_score_mean'], IS['inception_score_std']), rel=1e-6)

    def fid(a, b):
        return fid_statistics_to_metric(fid_features_to_statistics(a),
                                        fid_features_to_statistics(b), False)[
            'frechet_inception_distance']
    assert got['FID'] == pytest.approx(fid(fake, real), rel=1e-6)
    KID = kid_features_to_metric(real, fake, kid_subset_size=n_real, verbose=False)
    assert (got['KID_mean'], got['KID_std']) == pytest.approx(
        (KID['kernel_inception_distance_mean'], KID['kernel_inception_distance_std']),
        rel=0, abs=1e-6)
    PR = prc_features_to_metric(fake, real, verbose=False)
    assert (got['precision'], got['recall']) == pytest.approx(
        (PR['precision'], PR['recall']), rel=0, abs=1e-6)
    DC = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    assert (got['density'], got['coverage']) == pytest.approx(
        (DC['density'], DC['coverage']), rel=0, abs=1e-6)
    per_class = {str(c): fid(fake[fake_y == c], real[real_y == c]) for c in range(3)}
    assert got['intra_FID_per_class'] == pytest.approx(per_class, rel=1e-6)
    assert got['intra_FID'] == pytest.approx(np.mean(list(per_class.values())), rel=1e-6)
    assert list(got['intra_FID_skipped']) == ['7'] and '1 samples and 0 reference' in (
        got['intra_FID_skipped']['7'])
    assert 0 < got['density'] and 0 < got['coverage'] < 1 and got['KID_mean'] > 0


# ----------------------------------------------------------------------------- inputs

def write_png_folder(root, x: np.ndarray, labels=None) -> None:
    """Images x [N, H, W, 3] as PNGs named in order, in class subfolders if labels given."""
    for i, img in enumerate(x):
        folder = root if labels is None else root / f'class{labels[i]}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f'{i:04d}.png')


def test_npz_layouts_and_image_folders_score_alike(tmp_path, monkeypatch, weights_file, capsys):
    """x NHWC, x NCHW, arr_0 with arr_1, a PNG folder and a folder of class subfolders of the
    same images give the same numbers (TinyInception, a second .npz as the reference)."""
    stand_in(monkeypatch, TinyInception())
    x, y = random_images(30, seed=0), np.repeat(np.arange(3), 10)
    np.savez(tmp_path / 'ref.npz', x=random_images(40, seed=1), y=np.arange(40) % 3)
    np.savez(tmp_path / 'nhwc.npz', x=x, y=y)
    np.savez(tmp_path / 'nchw.npz', x=x.transpose(0, 3, 1, 2), y=y)
    np.savez(tmp_path / 'adm.npz', x, y)  # arr_0, arr_1
    write_png_folder(tmp_path / 'flat', x)
    write_png_folder(tmp_path / 'classes', x, y)
    flags = ['--ref', tmp_path / 'ref.npz', '--inception_weights', weights_file,
             '--batch_size', 8]
    records = {name: evaluate_json(tmp_path, tmp_path / name, *flags,
                                   *(['--intra_fid'] if name != 'flat' else []))
               for name in ('nhwc.npz', 'nchw.npz', 'adm.npz', 'flat', 'classes')}
    # A folder is scored in a fixed shuffled order: its IS splits are those of the npz of the
    # images in that order.
    order = np.random.RandomState(evaluate.FOLDER_ORDER_SEED).permutation(30)
    np.savez(tmp_path / 'shuffled.npz', x=x[order], y=y[order])
    records['shuffled.npz'] = evaluate_json(tmp_path, tmp_path / 'shuffled.npz', *flags,
                                            '--intra_fid')
    first = records['nhwc.npz']
    keys = ['FID', 'KID_mean', 'KID_std', 'precision', 'recall', 'density', 'coverage']
    for name, record in records.items():
        assert {k: record[k] for k in keys} == pytest.approx({k: first[k] for k in keys},
                                                             rel=1e-9), name
        IS_of = 'shuffled.npz' if name in ('flat', 'classes', 'shuffled.npz') else 'nhwc.npz'
        assert (record['IS_mean'], record['IS_std']) == pytest.approx(
            (records[IS_of]['IS_mean'], records[IS_of]['IS_std']), rel=1e-9), name
        if name != 'flat':
            assert record['intra_FID'] == pytest.approx(first['intra_FID'], rel=1e-9)
    assert first['num_samples'] == 30 and first['FID'] > 0 and first['intra_FID'] > 0
    out = capsys.readouterr().out
    assert 'npz x uint8 [N, 3, H, W], 16x16, labelled' in out
    assert 'folder of 16x16 images, labelled by subfolder' in out
    assert 'intra-class FID' in out and 'density' in out


def test_folder_of_mixed_sizes_and_modes(tmp_path, monkeypatch, weights_file):
    """Any size and mode: each image goes to RGB and the network resizes it, as one image
    alone would be (a change of size starts a new batch)."""
    net = TinyInception()
    stand_in(monkeypatch, net)
    folder = tmp_path / 'mixed'
    write_png_folder(folder, random_images(10, seed=2, size=16))
    Image.fromarray(random_images(1, seed=3, size=24)[0]).convert('L').save(folder / 'grey.png')
    Image.fromarray(random_images(1, seed=4, size=20)[0]).save(folder / 'photo.jpg')
    images = evaluate.open_images(str(folder))
    batches = list(images.read(4))
    assert images.num == 12 and sum(b.shape[0] for b in batches) == 12
    assert all(b.shape[0] <= 4 for b in batches)
    sizes = sorted(b.shape[2] for b in batches for _ in b)
    assert sizes == [16] * 10 + [20, 24]  # batches of one size each: 20 and 24 alone
    grey_batch = next(b for b in batches if b.shape[2] == 24)
    with Image.open(folder / 'grey.png') as grey:  # 'L' -> RGB: three equal channels
        np.testing.assert_array_equal(grey_batch[0], np.repeat(np.asarray(grey)[None], 3, 0))
    np.savez(tmp_path / 'ref.npz', x=random_images(12, seed=5))
    got = evaluate_json(tmp_path, folder, '--ref', tmp_path / 'ref.npz', '--inception_weights',
                        weights_file)
    assert np.isfinite([got['IS_mean'], got['FID'], got['density']]).all()


def test_dataset_files_score_as_a_second_npz_of_the_same_images(tmp_path, monkeypatch,
                                                                 weights_file):
    """--dataset reads the moments and features calculate_inception_moments.py wrote from
    the same images --ref reads: the same numbers. Intra-class FID needs the features file's
    labels, and says how to remake a file without them."""
    stand_in(monkeypatch, TinyInception())
    real, real_y = random_images(24, seed=6, size=32), np.arange(24) % 2
    with h5py.File(tmp_path / 'real.hdf5', 'w') as f:  # make_hdf5.py's layout
        f.create_dataset('imgs', data=real.transpose(0, 3, 1, 2))
        f.create_dataset('labels', data=real_y)
    cim.main(['--dataset', str(tmp_path / 'real.hdf5'), '--batch_size', '5', '--num_workers',
              '0', '--inception_weights', str(weights_file)])
    np.savez(tmp_path / 'real.npz', x=real, y=real_y)
    np.savez(tmp_path / 'fake.npz', x=random_images(20, seed=7, size=32), y=np.arange(20) % 2)
    flags = [tmp_path / 'fake.npz', '--inception_weights', weights_file]
    by_dataset = evaluate_json(tmp_path, *flags, '--dataset', tmp_path / 'real.hdf5')
    by_npz = evaluate_json(tmp_path, *flags, '--ref', tmp_path / 'real.npz', '--intra_fid')
    keys = ['IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std', 'precision', 'recall',
            'density', 'coverage']
    assert {k: by_dataset[k] for k in keys} == pytest.approx({k: by_npz[k] for k in keys},
                                                             rel=1e-6)
    # calculate_inception_moments.py stores the kept features' classes: intra-class FID works
    # against --dataset as against the same images given as --ref.
    with_labels = evaluate_json(tmp_path, *flags, '--dataset', tmp_path / 'real.hdf5',
                                '--intra_fid')
    assert with_labels['intra_FID'] == pytest.approx(by_npz['intra_FID'], rel=1e-6)


def test_without_a_features_file_fid_alone_and_a_note(tmp_path, monkeypatch, weights_file,
                                                      capsys):
    net = TinyInception()
    stand_in(monkeypatch, net)
    real = torch.from_numpy(random_images(12, seed=8).transpose(0, 3, 1, 2)).float() / 127.5 - 1
    _, moments = iu.accumulate_inception_stats(net, real.split(5), 12, num_splits=2)
    iu.save_moments(tmp_path / 'C10_inception_moments.npz', *moments.compute(), 'torchvision')
    np.savez(tmp_path / 'fake.npz', x=random_images(10, seed=9))
    got = evaluate_json(tmp_path, tmp_path / 'fake.npz', '--dataset', 'C10', '--data_root',
                        tmp_path, '--inception_weights', weights_file)
    assert set(got) == {'samples', 'num_samples', 'reference', 'inception', 'IS_mean',
                        'IS_std', 'FID'} and got['FID'] > 0
    assert 'no KID, precision/recall or density/coverage' in capsys.readouterr().out


# ----------------------------------------------------------------------------- sample.py

def test_sample_npz_scores_as_sample_py_measured_it(tmp_path, monkeypatch):
    """sample.py --sample_inception_metrics and evaluate.py of sample.py's npz of the same
    samples (same seed and batches) give the same numbers: both see the 8-bit images."""
    make_run(tmp_path)
    net = TinyInception()
    stand_in(monkeypatch, net)
    # Building the real Inception draws random numbers (its init): so does the stand-in, and
    # the metrics call still measures the images the npz call wrote.
    monkeypatch.setattr(iu, 'load_inception_net', lambda *args, **kwargs: (torch.randn(9), net)[1])
    weights_file = tmp_path / 'stand_in.pth'
    weights_file.write_bytes(b'stand-in')
    real = torch.from_numpy(random_images(30, seed=10, size=32).transpose(0, 3, 1, 2))
    _, moments, feats = iu.accumulate_inception_stats(net, (real.float() / 127.5 - 1).split(8),
                                                      30, num_splits=2, features=True)
    data = tmp_path / 'data'
    data.mkdir(exist_ok=True)
    iu.save_moments(data / 'C10_inception_moments.npz', *moments.compute(), 'torchvision')
    iu.save_features(iu.features_file(data / 'C10_inception_moments.npz'), feats,
                     'torchvision', 30, labels=np.arange(30) % 10)
    flags = ['--G_batch_size', '10', '--G_eval_mode', '--inception_weights', str(weights_file)]
    done = sample.run(sample_args(tmp_path, '--sample_npz', '--sample_num_npz', '20', *flags))
    measured = sample.run(sample_args(tmp_path, '--sample_inception_metrics',
                                      '--num_inception_images', '20', *flags))['metrics']
    got = evaluate_json(tmp_path, done['npz'], '--dataset', 'C10', '--data_root', data,
                        '--inception_weights', weights_file, '--batch_size', 10)
    keys = ['IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std', 'precision', 'recall',
            'density', 'coverage']
    assert {k: got[k] for k in keys} == {k: measured[k] for k in keys}
    assert measured['FID'] > 0 and 0 <= measured['coverage'] <= 1


# ----------------------------------------------------------------------------- bad input

def bad_inputs(tmp_path) -> dict:
    """{name: (argv, what the error says)} of inputs evaluate.py must refuse."""
    good = tmp_path / 'good.npz'
    np.savez(good, x=random_images(12, seed=11), y=np.arange(12) % 2)
    cases = {'float': dict(x=np.zeros((12, 8, 8, 3), np.float32)),
             'grey': dict(x=np.zeros((12, 8, 8), np.uint8)),
             'rgba': dict(x=np.zeros((12, 8, 8, 4), np.uint8)),
             'no_images': dict(images=np.zeros((12, 8, 8, 3), np.uint8)),
             'short_y': dict(x=np.zeros((12, 8, 8, 3), np.uint8), y=np.arange(11)),
             'few': dict(x=np.zeros((9, 8, 8, 3), np.uint8)),
             'no_y': dict(x=np.zeros((12, 8, 8, 3), np.uint8))}
    for name, arrays in cases.items():
        np.savez(tmp_path / f'{name}.npz', **arrays)
    (tmp_path / 'not_zip.npz').write_text('not an npz')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('no images')
    write_png_folder(tmp_path / 'broken', random_images(11, seed=12))
    (tmp_path / 'broken' / '0003.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    ref = ['--ref', str(good)]
    return {
        'float': (['float.npz', *ref], r'x has dtype float32; expected uint8'),
        'grey': (['grey.npz', *ref], r'shape \(12, 8, 8\); expected images \[N, H, W, 3\]'),
        'rgba': (['rgba.npz', *ref], r'shape \(12, 8, 8, 4\)'),
        'no_images': (['no_images.npz', *ref], 'holds no images: expected an array x'),
        'short_y': (['short_y.npz', *ref], r'labels y have shape \(11,\).*one per image'),
        'not_zip': (['not_zip.npz', *ref], 'is not an .npz file'),
        'empty': (['empty', *ref], r'empty holds no images \(it holds notes.txt\)'),
        'broken': (['broken', *ref], r'1 of the 11 images in .*broken cannot be read: '
                                     r'.*0003.png'),
        'few': (['few.npz', *ref], 'holds 9 images; the Inception Score needs at least one'),
        'intra_no_y': (['no_y.npz', *ref, '--intra_fid'], 'no_y.npz has no labels'),
        'missing': (['absent.npz', *ref], 'absent.npz does not exist'),
        'bad_ref': (['good.npz', '--ref', str(tmp_path / 'float.npz')], 'dtype float32'),
        'moments': (['good.npz', '--dataset', 'C10', '--data_root', str(tmp_path)],
                    'FID moments file .*C10_inception_moments.npz not found'),
        'json_folder': (['good.npz', *ref, '--json', str(tmp_path / 'no' / 'out.json')],
                        'the folder .*no does not exist'),
    }


def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                          weights_file):
    """Each bad input: one `evaluate.py: error:` line saying what is wrong, the network never
    loaded, no JSON written."""
    def no_work(*args, **kwargs):
        pytest.fail('the Inception network was loaded for a bad input')
    monkeypatch.setattr(iu, 'load_inception_net', no_work)
    monkeypatch.chdir(tmp_path)
    for name, (argv, message) in bad_inputs(tmp_path).items():
        out = tmp_path / 'out.json'
        argv = [*argv, '--inception_weights', str(weights_file)]
        if '--json' not in argv:
            argv += ['--json', str(out)]
        assert run_cli(functools.partial(evaluate.main, argv), 'evaluate.py') == 1, name
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith('evaluate.py: error: '), (name, err)
        assert re.search(message, err[0]), (name, err[0])
        assert not out.exists(), name
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == '.json') == []


def test_a_truncated_jpeg_is_named_and_nothing_is_written(tmp_path, monkeypatch, capsys,
                                                         weights_file):
    """PIL's verify passes a JPEG cut short; decoding it fails: the error names the file."""
    stand_in(monkeypatch, TinyInception())
    folder = tmp_path / 'cut'
    write_png_folder(folder, random_images(10, seed=14))
    Image.fromarray(random_images(1, seed=15, size=64)[0]).save(tmp_path / 'whole.jpg')
    data = (tmp_path / 'whole.jpg').read_bytes()
    (folder / 'cut.jpg').write_bytes(data[:len(data) // 2])
    np.savez(tmp_path / 'ref.npz', x=random_images(12, seed=16))
    out = tmp_path / 'out.json'
    argv = [str(folder), '--ref', str(tmp_path / 'ref.npz'), '--inception_weights',
            str(weights_file), '--json', str(out)]
    assert run_cli(functools.partial(evaluate.main, argv), 'evaluate.py') == 1
    err = capsys.readouterr().err
    assert re.search(r'evaluate.py: error: cannot read the image .*cut.jpg: image file is '
                     r'truncated', err) and not out.exists()


# ----------------------------------------------------------------------------- networks

@pytest.mark.parametrize('inception', iu.INCEPTIONS)
def test_both_inception_networks(tmp_path, inception):
    """The real architectures (random weights, He-init so features are not ~0): an npz
    scored against itself has FID ~0 and full precision, recall and coverage."""
    torch.manual_seed(0)
    net = iu._inception_v3(inception)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    torch.save(net.state_dict(), tmp_path / 'weights.pth')
    np.savez(tmp_path / 'x.npz', x=random_images(10, seed=13, size=8))
    shutil.copy(tmp_path / 'x.npz', tmp_path / 'same.npz')
    got = evaluate_json(tmp_path, tmp_path / 'x.npz', '--ref', tmp_path / 'same.npz',
                        '--inception', inception, '--inception_weights',
                        tmp_path / 'weights.pth')
    assert got['inception'] == inception and 1 <= got['IS_mean']
    assert abs(got['FID']) < 1e-3 * max(1.0, got['IS_mean'])
    assert (got['precision'], got['recall'], got['coverage']) == (1.0, 1.0, 1.0)
