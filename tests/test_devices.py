"""The platform line, the stop when a GPU is visible but jax runs on the CPU, the install lines."""

import os
import pathlib
import re
import subprocess

import pytest

from fixres_jax import config as config_lib
from fixres_jax import devices
from test_reliability import REPO, environment, main_command


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
  """An nvidia-smi on PATH that lists one GPU, and no driver files: jax itself stays on CPU."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  script = bin_dir / 'nvidia-smi'
  script.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)"\n')
  script.chmod(0o755)
  monkeypatch.setattr(devices, 'NVIDIA_PROC', str(tmp_path / 'no_proc'))
  monkeypatch.setattr(devices, 'NVIDIA_DEVICE', str(tmp_path / 'no_dev'))
  monkeypatch.setenv('PATH', f'{bin_dir}:{os.environ["PATH"]}')
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  return bin_dir


def test_cpu_run_on_a_gpu_machine_stops_with_the_install_line(fake_gpu):
  config = config_lib.get_base_config()
  with pytest.raises(devices.PlatformError, match='NVIDIA H100') as error:
    devices.check_platform(config)
  assert devices.install_line('gpu') in str(error.value)
  assert 'allow_cpu_with_gpu=True' in str(error.value)


def test_cpu_on_a_gpu_machine_when_the_user_means_it(fake_gpu, monkeypatch):
  config = config_lib.get_base_config()
  config.allow_cpu_with_gpu = True
  devices.check_platform(config)
  config.allow_cpu_with_gpu = False
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  devices.check_platform(config)


def test_driver_files_alone_reveal_a_gpu(tmp_path, monkeypatch):
  monkeypatch.setattr(devices, 'NVIDIA_PROC', str(tmp_path / 'gpus'))
  monkeypatch.setattr(devices, 'NVIDIA_DEVICE', str(tmp_path / 'no_dev'))
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert devices.visible_nvidia_gpus() == []
  (tmp_path / 'gpus' / '0000:00:04.0').mkdir(parents=True)
  assert devices.visible_nvidia_gpus() == ['0000:00:04.0']


def test_no_gpu_no_stop(tmp_path, monkeypatch):
  monkeypatch.setattr(devices, 'NVIDIA_PROC', str(tmp_path / 'no_proc'))
  monkeypatch.setattr(devices, 'NVIDIA_DEVICE', str(tmp_path / 'no_dev'))
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  devices.check_platform(config_lib.get_base_config())


def test_platform_line_names_backend_kind_and_counts():
  line = devices.describe()
  assert re.fullmatch(r'cpu: \d+ x cpu \(\d+ local / \d+ global devices, process 0 of 1\)',
                      line), line


def test_determinism_flag_is_added_once(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  config = config_lib.get_base_config()
  devices.request_determinism(config)
  devices.request_determinism(config)
  assert os.environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=2 '
                                     '--xla_gpu_deterministic_ops=true')
  monkeypatch.setenv('XLA_FLAGS', '')
  config.deterministic = False
  devices.request_determinism(config)
  assert os.environ['XLA_FLAGS'] == ''


@pytest.mark.parametrize('environment,threads', [
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}, 17),
    ({'XLA_FLAGS': '--a=1 --xla_force_host_platform_device_count=2 --b=2'}, 5),
    ({'JAX_NUM_CPU_DEVICES': '4', 'XLA_FLAGS': ''}, 9),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}, None),
    ({'XLA_FLAGS': ''}, None),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'PJRT_NPROC': '3'}, 3),
])
def test_several_cpu_devices_get_two_threads_each_and_one(monkeypatch, environment, threads):
  monkeypatch.delenv('PJRT_NPROC', raising=False)
  monkeypatch.delenv('JAX_NUM_CPU_DEVICES', raising=False)
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  for name, value in environment.items():
    monkeypatch.setenv(name, value)
  devices.provision_cpu_threads()
  assert os.environ.get('PJRT_NPROC') == (None if threads is None else str(threads))


def test_a_machine_with_more_cores_keeps_its_threads(monkeypatch):
  monkeypatch.delenv('PJRT_NPROC', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.setattr(os, 'cpu_count', lambda: 64)
  devices.provision_cpu_threads()
  assert os.environ['PJRT_NPROC'] == '64'


def test_readme_install_section_shows_the_launchers_lines():
  readme = (REPO / 'README.md').read_text()
  section = readme.split('## Install', 1)[1].split('\n## ', 1)[0]
  jax_pin = re.search(r'^jax==(\S+)$', (REPO / 'requirements.txt').read_text(), re.M).group(1)
  for target in ('cpu', 'gpu', 'tpu'):
    assert devices.install_line(target) in section, target
  assert f'"jax[cuda12]=={jax_pin}"' in devices.install_line('gpu')
  assert f'"jax[tpu]=={jax_pin}"' in devices.install_line('tpu')


@pytest.mark.slow
def test_main_stops_before_compiling_when_a_gpu_is_idle(fake_gpu, tmp_path, synthetic_data_dir):
  env = dict(environment(), PATH=os.environ['PATH'])
  del env['JAX_PLATFORMS']
  result = subprocess.run(main_command(tmp_path / 'run', synthetic_data_dir), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]  # errors.EXIT_CODE: a user's error
  assert 'JAX on cpu: 2 x cpu' in result.stderr  # XLA accepted the determinism flag too
  assert devices.install_line('gpu') in result.stderr
  assert 'Traceback' not in result.stderr and 'Training' not in result.stderr
  assert not pathlib.Path(tmp_path / 'run').exists()
