# The README's two commands are `make run` and `make test`; both install what they need.
PY ?= python3
PIP ?= $(PY) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install run test test-native test-pure bench bench-smoke wheel clean

# Editable install: builds the Cython speedups in place, so the source tree runs native.
install:
	$(PIP) install -q -e '.[test]'

run: install
	$(PY) -m proxy demo

# The whole suite runs twice: on the native (Cython) speedups and on their pure-Python twins.
test: install test-native test-pure

test-native:
	FLEETPROXY_EXPECT_NATIVE=1 $(PY) -m pytest -q

test-pure:
	FLEETPROXY_PURE=1 $(PY) -m pytest -q

bench: install
	$(PIP) install -q -e '.[test,bench]'
	$(PY) -m bench --pin

bench-smoke: install
	$(PIP) install -q -e '.[test,bench]'
	$(PY) -m bench --smoke

# What the Dockerfile's build stage runs; .ci/run runs it too, so CI proves the image's steps.
wheel:
	$(PIP) wheel -q -w dist/wheels .

clean:
	rm -rf build dist *.egg-info _speedups/*_c.py _speedups/*.c _speedups/*.so
