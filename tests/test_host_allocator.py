"""The CLI's host allocator setting: re-executed once with GLIBC_TUNABLES, CPU only."""
import os
import sys

import pytest

from clipjax import host_allocator


@pytest.fixture
def execs(monkeypatch):
  calls = []
  monkeypatch.setattr(os, 'execve', lambda path, args, env: calls.append((path, args, env)))
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.delenv('CLIPJAX_HOST_MALLOC', raising=False)
  monkeypatch.setattr(sys, 'argv', ['/x/clipjax/main.py', '--config', 'c.py', '--workdir', 'w'])
  return calls


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc tunables: Linux only')
def test_cpu_runs_reexecute_with_the_tunables(execs, monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  host_allocator.reexec('clipjax.main')
  [(path, args, env)] = execs
  assert path == sys.executable
  assert args == [sys.executable, '-m', 'clipjax.main', '--config', 'c.py', '--workdir', 'w']
  assert env['GLIBC_TUNABLES'] == host_allocator.TUNABLES and env['JAX_PLATFORMS'] == 'cpu'


@pytest.mark.parametrize('env', [dict(GLIBC_TUNABLES='glibc.malloc.arena_max=2'),
                                 dict(CLIPJAX_HOST_MALLOC='0'), dict(JAX_PLATFORMS='cuda'),
                                 dict(JAX_PLATFORMS='tpu,cpu')])
def test_left_alone_when_set_disabled_or_on_an_accelerator(execs, monkeypatch, env):
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  host_allocator.reexec('clipjax.main')
  assert not execs
