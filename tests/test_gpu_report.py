"""Tests of benchmarks/gpu_report.py: missing checks and failed modes are said, not hidden."""
import json

from benchmarks import gpu_report


def test_an_empty_folder_reports_every_check_as_missing(tmp_path):
    text = gpu_report.main([str(tmp_path)])
    for what in ('training step: not measured', 'profile: not measured',
                 'sampling: not measured'):
        assert what in text
    assert json.loads((tmp_path / 'summary.json').read_text())['env'] == ''


def test_failed_modes_and_the_target_verdict(tmp_path):
    bench = {'config': {'model': 'BigGAN', 'resolution': 128, 'G_ch': 96, 'D_ch': 96},
             'real_images_per_iter': 256, 'gflop_per_image': 343.2,
             'rows': [{'mode': 'fp32', 'error': 'OutOfMemoryError: CUDA out of memory'},
                      {'mode': 'bf16', 'images_per_s': 1100.0, 'ms_per_iter': 232.7,
                       'peak_mem_GiB': 60.0, 'TFLOP_per_s': 377.5, 'MFU': 0.38}],
             'loader': {'skipped': 'no file'}}
    (tmp_path / 'bench.json').write_text(json.dumps(bench))
    text = gpu_report.main([str(tmp_path), '--target', '1000'])
    assert 'fp32                failed: OutOfMemoryError' in text
    assert 'fastest: bf16, 1,100 img/s (target 1,000: met)' in text
    assert 'not measured: bench_compile.json, bench_compile_ro.json' in text
    assert "HDF5 loader: not measured ({'skipped': 'no file'})" in text
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['target_met'] and summary['fastest_mode'] == 'bf16'
    assert 'NOT met' in gpu_report.main([str(tmp_path), '--target', '2000'])
