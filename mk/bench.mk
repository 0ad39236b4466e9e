# `make bench` (Makefile): its extra tools and its Cassandra.
# bench-setup: matplotlib (the report's plots; the `bench` extra) and the baseline the ingest
# bench compares with, the face_recognition package, pinned in requirements.lock and installed
# without its dependencies: it requires `dlib`, which pip would compile from source, while
# dlib-bin (a project dependency) already provides the module and face-recognition-models the models.
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: bench-setup

bench-setup: $(BENCH_STAMP)
$(BENCH_STAMP): $(STAMP) pyproject.toml requirements.lock
	$(PIP) install -q -c requirements.lock -e '.[dev,deploy,bench]'
	$(PIP) install -q --no-deps -c requirements.lock face_recognition
	touch $@
