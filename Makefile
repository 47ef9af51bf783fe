# The README's two commands are `make run` and `make test`; both install what they need.
# Everything goes into a project virtual environment, .venv, made once from $(PY): Debian and
# Ubuntu refuse `pip install` into the system Python (PEP 668), and a venv keeps the suite's pins
# away from whatever else that Python serves. `make install` refreshes what is in it; to start
# over, remove .venv.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install run test test-native test-pure bench bench-smoke wheel clean
.DEFAULT_GOAL := install

# Checked before anything is made: a failed `python3 -m venv` leaves a .venv without pip behind,
# which would pass for a finished one on the next run. Debian ships venv's ensurepip apart from
# its python3, in python3-venv.
$(VPY):
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "fleetproxy needs Python 3.11 or newer; '$(PY)' is $$($(PY) -V 2>/dev/null || echo 'not found')." >&2; \
	  echo "Point PY at one, e.g.: make $(or $(MAKECMDGOALS),install) PY=python3.11" >&2; exit 1; }
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "'$(PY)' cannot create a virtual environment: its venv/ensurepip module is missing." >&2; \
	  echo "On Debian/Ubuntu: apt-get install python3-venv (for a Python other than the default" \
	    "python3: python$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv)" >&2; exit 1; }
	$(PY) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

# Editable install: builds the Cython speedups in place, so the source tree runs native. pip -q
# hides setup.py's note when that build falls back to pure; the native test run would then fail
# far from the cause, so say it here.
NATIVE_HINT = fleetproxy: the Cython speedups were not built, so the pure-Python ones will run \
  and the native half of make test will fail. Building them needs a C compiler and the Python \
  headers: on Debian/Ubuntu, apt-get install gcc python3-dev, then make install again.

# Then uvloop is built again from its source release with the GIL kept across its waits (each
# libuv callback then takes no GIL round trip: README, "The event loop and the GIL"). Once: a
# built one is kept. Where it cannot build it says why, and the stock uvloop serves.
install: $(VPY)
	$(PIP) install -q -e '.[test]'
	@$(VPY) -c 'import _speedups as s, sys; sys.exit(not s.PURE and s.IMPLEMENTATION != "native")' \
	  || echo "$(NATIVE_HINT)" >&2
	$(VPY) third_party/uvloop/build.py

run: install
	$(VPY) -m proxy demo

# The whole suite runs twice: on the native (Cython) speedups and on their pure-Python twins.
# -rs: each skipped test is listed with its reason (a missing package or service says so).
test: install test-native test-pure

test-native:
	FLEETPROXY_EXPECT_NATIVE=1 $(VPY) -m pytest -q -rs

test-pure:
	FLEETPROXY_PURE=1 $(VPY) -m pytest -q -rs

bench: install
	$(PIP) install -q -e '.[test,bench]'
	$(VPY) -m bench --pin

bench-smoke: install
	$(PIP) install -q -e '.[test,bench]'
	$(VPY) -m bench --smoke

# What the Dockerfile's build stage runs; .ci/run runs it too, so CI proves the image's steps.
# The venv only supplies pip (Debian's python3 may have none): the wheels are built from source.
wheel: $(VPY)
	$(PIP) wheel -q -w dist/wheels .
	$(VPY) third_party/uvloop/build.py --wheel-dir dist/wheels

clean:
	rm -rf build dist *.egg-info _speedups/*_c.py _speedups/*.c _speedups/*.so _speedups/compiled.json
	find proxy \( -name '*.so' -o -name '*.c' \) -delete  # the compiled data path (setup.py)
