"""Tests of sampling by class and seed: sample.py --classes/--seeds, class names (HDF5 files,
ImageNet, run configs), labelled sheets, the Python API (biggan_api.py) and torch.hub.

The runs are tiny 32x32 ones written as train.py writes runs (test_sample.py's way): a model
on a packed image folder whose classes have names, a converted-generator folder with ImageNet's
1000 classes and a per-truncation BN table, and the 2019 run fixture (no names).
"""
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_image_files import write_folder

import biggan_api
import BigGANdeep
import bn_stats
import class_names
import datasets
import grids
import make_hdf5
import sample
import train
import utils
from helpers import ROOT, shared_file, write_hdf5

NAME = 'named'
NAMES = ['daisy', 'golden retriever', 'tabby cat']  # the class folders, in label order


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """Base root of a run on a packed folder of NAMES (the names come from the HDF5 file)."""
    root = tmp_path_factory.mktemp('base')
    folder = write_folder(root / 'pets', {n: 2 for n in reversed(NAMES)}, size=(32, 32))
    packed = make_hdf5.pack_folder(folder, root / 'pets_32.hdf5', 32, num_workers=0,
                                   progress=False).path
    shutil.rmtree(folder)  # the names must come from the HDF5 file
    flags = ['--dataset', str(packed), '--G_ch', '4', '--D_ch', '4', '--G_attn', '0',
             '--D_attn', '0', '--G_shared', '--shared_dim', '8', '--hier', '--dim_z', '16',
             '--ema', '--use_ema', '--batch_size', '8', '--G_init', 'N02', '--D_init', 'N02',
             '--experiment_name', NAME, '--base_root', str(root)]
    config = train.prepare_config(vars(utils.prepare_parser().parse_args(flags)))
    torch.manual_seed(0)
    G, D, G_ema = train.build_models(config, torch.device('cpu'))
    with torch.no_grad():  # G_ema unlike G; BN statistics unlike the initial ones
        for name, t in [*G_ema.named_parameters(), *G_ema.named_buffers()]:
            if name.endswith('stored_var'):
                t.mul_(1 + 0.5 * torch.rand_like(t))
            elif name.endswith('stored_mean') or name in dict(G_ema.named_parameters()):
                t.add_(0.05 * torch.randn_like(t))
    state = {'itr': 5, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
             'best_FID': 999999, 'config': config}
    run_dir = utils.save_weights(G, D, state, config['weights_root'], NAME, G_ema=G_ema)
    utils.save_config(config, f'{run_dir}/config.json')
    return root


def args(base, *flags):
    """sample.py flags that find the run by name."""
    return ['--base_root', str(base), '--experiment_name', NAME, *flags]


def pixels(paths) -> np.ndarray:
    """The images at paths as one uint8 array."""
    return np.stack([np.asarray(Image.open(p)) for p in paths])


def error_of(argv, capsys) -> str:
    """The one-line error sample.py prints for argv (status 1, no traceback)."""
    assert sample.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('sample.py: error:') and 'Traceback' not in err
    return err


def test_class_names_come_from_the_hdf5_file_and_are_recorded_in_the_config(base):
    assert class_names.hdf5_class_names(base / 'pets_32.hdf5') == NAMES
    saved = json.loads((base / 'weights' / NAME / 'config.json').read_text())
    assert saved['class_names'] == NAMES
    assert class_names.hdf5_class_names(write_hdf5(base / 'old.hdf5')) is None  # 2019 file


def test_imagenet_names():
    names = class_names.imagenet_class_names()
    assert len(names) == 1000 and names[207] == 'golden retriever' and names[0] == 'tench'
    spec = datasets.resolve_dataset('I128_hdf5', 'nowhere')  # named: no file needed
    assert class_names.dataset_class_names('I128_hdf5', spec) == list(names)
    assert class_names.class_indices(['golden retriever', '980', 985], names, 1000) == [
        207, 980, 985]
    assert class_names.class_index('GOLDEN RETRIEVER', names, 1000) == 207  # case: one match


def test_cifar_names():
    """C10 / C100 runs know their classes' names (the datasets' meta files', no download)."""
    c10 = class_names.dataset_class_names('C10', datasets.resolve_dataset('C10'))
    c100 = class_names.dataset_class_names('C100', datasets.resolve_dataset('C100'))
    assert c10[3] == 'cat' and c10[8] == 'ship' and len(c10) == 10
    # CIFAR-100's fine label names are in alphabetical order, one per label
    assert len(set(c100)) == 100 and c100 == sorted(c100) and c100[88] == 'tiger'


def test_closest_names_in_the_error():
    names = class_names.imagenet_class_names()
    with pytest.raises(class_names.ClassError) as err:
        class_names.class_index('golden retreiver', names, 1000)
    assert str(err.value).startswith("class 'golden retreiver' is not one of this run's 1000 "
                                     "class names; closest: 'golden retriever' (207)")
    with pytest.raises(class_names.ClassError, match=r"'Cardigan' \(264\), 'cardigan' \(474\)"):
        class_names.class_index('cardigam', names, 1000)  # both names that fold to the match
    assert class_names.class_index(' cardigan ', names, 1000) == 474  # exact, spaces stripped
    with pytest.raises(class_names.ClassError, match='several names when case is ignored'):
        class_names.class_index('CARDIGAN', names, 1000)


def test_seeds_give_the_same_images_on_every_call_and_batch_size(base):
    first = sample.run(args(base, '--classes', 'golden retriever,0', '--seeds', '0-2,7',
                            '--G_batch_size', '1'))['seeds']
    folder = base / 'samples' / NAME / 'seeds'
    assert first['images'][:2] == [str(folder / 'class1_golden_retriever_seed0.png'),
                                   str(folder / 'class1_golden_retriever_seed1.png')]
    assert first['images'][4] == str(folder / 'class0_daisy_seed0.png')
    x = pixels(first['images'])
    assert x.shape == (8, 32, 32, 3) and x.std() > 5
    again = sample.run(args(base, '--classes', 'golden retriever,0', '--seeds', '0-2,7',
                            '--G_batch_size', '7'))['seeds']
    assert np.array_equal(pixels(again['images']), x)
    # The grid: a labelled row per class, a column per seed, the PNGs' pixels.
    grid = np.asarray(Image.open(again['grids'][0]))
    margin = grid.shape[1] - (4 * 34 + 2)
    assert grid.shape[0] == 2 * 34 + 2 and margin % 16 == 0 and margin >= 48
    assert np.array_equal(grid[2 + 34:2 + 34 + 32, margin + 2 + 34:margin + 2 + 34 + 32], x[5])
    assert (grid[:, :margin] < 128).any() and (grid[:, :margin] == 255).mean() > 0.8
    # One image per seed and class, whatever else is asked: seed 7 of class 1 alone.
    alone = sample.run(args(base, '--classes', '1', '--seeds', '7'))['seeds']
    assert np.array_equal(pixels(alone['images'])[0], x[3])


def test_standing_stats_do_not_depend_on_the_batch_size(base):
    """--accumulate_stats: the standing statistics of seeded images are drawn with the run's
    --batch_size, so --G_batch_size changes no image; other outputs keep theirs."""
    runs = [pixels(sample.run(args(base, '--classes', '2', '--seeds', '3,4', '--accumulate_stats',
                                   '--G_batch_size', b, '--sample_random'))['seeds']['images'])
            for b in ('2', '5')]
    plain = pixels(sample.run(args(base, '--classes', '2', '--seeds', '3,4'))['seeds']['images'])
    assert np.array_equal(runs[0], runs[1])
    assert np.abs(runs[0].astype(int) - plain).mean() > 5  # the standing statistics were used


def test_bad_classes_are_errors_that_touch_nothing(base, tmp_path, capsys):
    shutil.copytree(base / 'weights', tmp_path / 'weights')
    err = error_of(args(tmp_path, '--classes', '1,3', '--seeds', '0'), capsys)
    assert 'class index 3 is out of range: this run has 3 classes, 0 to 2' in err
    err = error_of(args(tmp_path, '--classes', 'golden retreiver', '--seeds', '0'), capsys)
    assert "class 'golden retreiver' is not one of this run's 3 class names" in err
    assert "closest: 'golden retriever' (1)" in err
    assert 'needs --seeds' in error_of(args(tmp_path, '--classes', '1'), capsys)
    assert 'needs --classes' in error_of(args(tmp_path, '--seeds', '0-3'), capsys)
    assert 'expected seeds and ranges' in error_of(args(tmp_path, '--classes', '1',
                                                        '--seeds', '5-2'), capsys)
    assert 'empty entry' in error_of(args(tmp_path, '--classes', '1,,2', '--seeds', '0'),
                                     capsys)
    assert not (tmp_path / 'samples').exists()


def test_sheets_label_their_rows(base):
    sheet = sample.run(args(base, '--sample_sheets', '--G_eval_mode'))['sheets'][0]
    image = np.asarray(Image.open(sheet))
    margin = image.shape[1] - (10 * 34 + 2)
    assert image.shape[0] == 3 * 34 + 2 and margin % 16 == 0 and margin > 0
    for row in range(3):  # text beside every row
        assert (image[2 + row * 34:2 + row * 34 + 32, :margin] < 128).any()


def test_label_rows_pastes_the_grid_unchanged():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    plain = grids.grid_image(images, 3)
    labelled = grids.label_rows(plain, ['0 ' + 'x' * 60, '1 café'], row_height=10)
    margin = labelled.width - plain.width
    assert np.array_equal(np.asarray(labelled)[:, margin:], np.asarray(plain))
    assert margin % 16 == 0


def test_api_equals_sample_py(base):
    run = biggan_api.load(base / 'weights' / NAME)
    assert run.class_names == NAMES and run.class_index('tabby cat') == 2
    done = sample.run(args(base, '--classes', 'tabby cat,0', '--seeds', '4,9',
                           '--truncation', '0.5'))['seeds']
    images = run.sample(['tabby cat', 0], seeds=[4, 9], truncation=0.5, as_pil=True)
    assert np.array_equal(np.stack([np.asarray(i) for i in images]), pixels(done['images']))
    tensor = run.sample(['tabby cat', 0], seeds='4,9', truncation=0.5)
    assert tensor.shape == (4, 3, 32, 32) and tensor.dtype == torch.float32
    assert np.array_equal(utils.to_uint8(tensor).numpy(), pixels(done['images']))
    # The default truncation is the one given to load; G_ema unless use_ema=False.
    assert torch.equal(biggan_api.load(base / 'weights' / NAME, truncation=0.5).sample(
        2, 4), tensor[:1])
    G_run = biggan_api.load(NAME, base_root=str(base), use_ema=False)
    assert G_run.sampler.weights_file.name == 'G.pth'
    assert not torch.equal(G_run.sample(2, 4, truncation=0.5), tensor[:1])


def test_api_errors(base):
    run = biggan_api.load(base / 'weights' / NAME)
    with pytest.raises(biggan_api.SampleError, match='out of range: this run has 3 classes'):
        run.sample(3, seeds=0)
    with pytest.raises(biggan_api.SampleError, match="closest: 'daisy' \\(0\\)"):
        run.sample('daisies', seeds=0)
    with pytest.raises(biggan_api.SampleError, match='seeds'):
        run.sample(0, seeds=[-1])
    with pytest.raises(biggan_api.SampleError, match='truncation 5'):
        run.sample(0, seeds=0, truncation=5)
    with pytest.raises(biggan_api.SampleError, match="did you mean use_ema"):
        biggan_api.load(base / 'weights' / NAME, use_emma=False)
    with pytest.raises(biggan_api.SampleError, match='no run folder'):
        biggan_api.load('nope', base_root=str(base))


def test_hub_load(base):
    run = torch.hub.load(str(ROOT), 'biggan', str(base / 'weights' / NAME), source='local')
    assert isinstance(run, biggan_api.BigGANRun)
    expected = biggan_api.load(base / 'weights' / NAME).sample('daisy', seeds=[1, 2])
    assert torch.equal(run.sample('daisy', seeds=[1, 2]), expected)
    import hubconf  # torch.hub's conventions: its dependencies import, entry points say what
    assert all(importlib.util.find_spec(name) for name in hubconf.dependencies)
    assert 'seed' in hubconf.biggan.__doc__


def test_2019_cifar_run_samples_by_name_and_index(tmp_path):
    """The 2019 run (--dataset C10, no class names saved) takes CIFAR-10's names."""
    fixture = shared_file('fixtures/run2019/weights/run2019/G_ema.pth').parent
    shutil.copytree(fixture, tmp_path / 'run2019')
    run = biggan_api.load(tmp_path / 'run2019')
    assert run.class_names[:3] == ['airplane', 'automobile', 'bird'] and run.n_classes == 10
    by_name = run.sample(['cat', 'truck'], seeds=[0, 1])
    assert by_name.shape == (4, 3, 32, 32)
    assert torch.equal(by_name, run.sample([3, 9], seeds=[0, 1]))


def test_a_run_without_names_takes_indices():
    with pytest.raises(class_names.ClassError, match='no class names.*class indices, 0 to 9'):
        class_names.class_index('cat', None, 10)
    assert class_names.class_indices(['3', 7], None, 10) == [3, 7]


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """A converted BigGAN-deep folder (G.pth, config.json, BN table) of 1000 classes."""
    run_dir = tmp_path_factory.mktemp('hub') / 'deep'
    run_dir.mkdir()
    config = dict(model='BigGANdeep', resolution=32, n_classes=1000, G_ch=4, G_depth=2,
                  dim_z=16, shared_dim=16, hier=True, G_shared=True, G_attn='0',
                  skip_init=True, G_eval_mode=True, truncation_style='scaled')
    torch.manual_seed(1)
    G = BigGANdeep.Generator(**config)
    torch.save(G.state_dict(), run_dir / 'G.pth')
    (run_dir / 'config.json').write_text(json.dumps(config))
    norms = {n: m for n, m in G.named_modules() if getattr(m, 'stored_mean', None) is not None}
    stats = {n: (torch.randn(3, len(m.stored_mean)) * 0.3,
                 torch.rand(3, len(m.stored_var)) + 0.5) for n, m in norms.items()}
    bn_stats.save_table(bn_stats.make_table(stats, 'linear', G, 'test'), str(run_dir))
    return run_dir


@pytest.mark.parametrize('t', [0.5, 0.0, 1.0])
def test_converted_imagenet_run_api_equals_sample_py(converted, tmp_path, t):
    """ImageNet's names; each truncation's BN statistics, set per call (and undone) by the
    API as sample.py sets them when it starts."""
    run = biggan_api.load(converted, device='cpu')
    assert run.class_names[207] == 'golden retriever'
    for _ in range(2):  # a second call after another truncation: the same images
        images = run.sample(['golden retriever', 'daisy'], seeds=[0, 3], truncation=t)
        run.sample(1, seeds=0, truncation=0.25)
    done = sample.run(['--weights', str(converted), '--base_root', str(tmp_path), '--classes',
                       'golden retriever,daisy', '--seeds', '0,3', '--truncation', str(t)])
    assert np.array_equal(utils.to_uint8(images).numpy(), pixels(done['seeds']['images']))
    assert done['seeds']['images'][0].endswith('class207_golden_retriever_seed0.png')
