"""Published Hugging Face BigGAN-deep names (`biggan-deep-128`, ...) in TFHub/converter.py --hf
and biggan_api.load: read from the pytorch-pretrained-biggan download cache, as the package
names its files there (no network here: the cache is filled the way the package fills it),
converted once by the API; offline and not cached, an error naming the files and a folder."""
import json
import shutil

import pytest
import torch
from test_hf_converter import hf_converter, make_hf_folder, run_converter

import biggan_api

pytest.importorskip('pytorch_pretrained_biggan')
from pytorch_pretrained_biggan import file_utils, model  # noqa: E402

NAME = 'biggan-deep-128'


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty package cache and torch hub dir of the test's own, the network refused."""
    folder = tmp_path / 'pytorch_pretrained_biggan'
    monkeypatch.setattr(file_utils, 'PYTORCH_PRETRAINED_BIGGAN_CACHE', str(folder))
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))

    def offline(url, cache_dir=None):
        raise ConnectionError(f'no network for {url}')
    monkeypatch.setattr(file_utils, 'cached_path', offline)
    return folder


def fill_cache(cache, hf_dir, etag='"abc123"'):
    """Put a model folder's two files in the cache under the package's names for NAME's
    URLs (url_to_filename(url, etag), and the .json meta file it writes last)."""
    cache.mkdir(parents=True, exist_ok=True)
    urls = (model.PRETRAINED_MODEL_ARCHIVE_MAP[NAME], model.PRETRAINED_CONFIG_ARCHIVE_MAP[NAME])
    for url, source in zip(urls, ('pytorch_model.bin', 'config.json')):
        target = cache / file_utils.url_to_filename(url, etag)
        shutil.copy(hf_dir / source, target)
        (cache / (target.name + '.json')).write_text(json.dumps({'url': url, 'etag': etag}))


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
    return make_hf_folder(tmp_path_factory.mktemp('hf') / 'model', 128, ch=4, n_classes=5,
                          seed=3)


def test_a_name_reads_the_package_cache_offline(cache, hf_dir, tmp_path):
    fill_cache(cache, hf_dir)
    weights, config = hf_converter.package_files(NAME)
    assert weights.read_bytes() == (hf_dir / 'pytorch_model.bin').read_bytes()
    assert json.loads(config.read_text()) == json.loads((hf_dir / 'config.json').read_text())
    assert run_converter(NAME, tmp_path / 'weights', 'named', '--truncation', '0.5') == 0
    assert run_converter(hf_dir, tmp_path / 'weights', 'folder', '--truncation', '0.5') == 0
    named, folder = (torch.load(tmp_path / 'weights' / n / 'G.pth', weights_only=True)
                     for n in ('named', 'folder'))
    assert named.keys() == folder.keys()
    assert all(torch.equal(named[k], folder[k]) for k in named)


def test_a_half_written_cache_entry_is_not_taken(cache, hf_dir):
    """The package writes the .json meta after the file: without it, the file may be cut."""
    fill_cache(cache, hf_dir)
    for meta in cache.glob('*.json'):
        meta.unlink()
    with pytest.raises(hf_converter.HFConversionError, match='not in the pytorch-pretrained'):
        hf_converter.package_files(NAME)


def test_offline_and_not_cached_says_which_files_and_what_to_give(cache, tmp_path, capsys):
    assert run_converter(NAME, tmp_path / 'weights', 'named') == 1
    err = capsys.readouterr().err
    assert 'downloading https://' in err and 'ConnectionError' in err
    assert 'as pytorch_model.bin' in err and 'give that folder instead of the name' in err
    assert not (tmp_path / 'weights').exists()
    with pytest.raises(biggan_api.SampleError, match='not in the pytorch-pretrained-biggan'):
        biggan_api.load(NAME)


def test_the_api_loads_a_name_and_converts_it_once(cache, hf_dir, tmp_path, monkeypatch):
    """load(NAME) samples as load(the folder converted by the CLI) does, and converts once."""
    fill_cache(cache, hf_dir)
    run = biggan_api.load(NAME, device='cpu')
    run_dir = f'{torch.hub.get_dir()}/{biggan_api.HF_CONVERTED_DIR}/{NAME}'
    assert str(run.sampler.weights_file) == f'{run_dir}/G.pth'
    images = run.sample([1, 4], seeds=[0, 1], truncation=0.5)
    assert run_converter(hf_dir, tmp_path / 'weights', 'folder') == 0
    by_folder = biggan_api.load(tmp_path / 'weights' / 'folder', device='cpu')
    assert torch.equal(by_folder.sample([1, 4], seeds=[0, 1], truncation=0.5), images)
    monkeypatch.setattr(hf_converter, 'convert', lambda *a, **k: pytest.fail('converted twice'))
    again = biggan_api.load(NAME, device='cpu')
    assert torch.equal(again.sample([1, 4], seeds=[0, 1], truncation=0.5), images)
