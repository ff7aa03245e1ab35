# kmem: MicroPython memory manager. Logic lives in tools/kmemhost; recipes stay short.
VENV := .venv
PY := $(VENV)/bin/python
# MICROPYTHON=/path/to/micropython overrides the unix port from the venv.
MICROPYTHON ?= $(abspath $(VENV))/bin/micropython
export MICROPYTHON
KMEMHOST := PYTHONPATH=tools $(PY) -m kmemhost
STAMP := $(VENV)/.installed

.PHONY: venv test mpy-check lint demo repl clean distclean

venv: $(STAMP)

# Re-installs whenever requirements.txt changes.
$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	printf '#!/bin/sh\nPYTHONPATH="%s/tools$${PYTHONPATH:+:$$PYTHONPATH}" exec "%s/$(PY)" -m kmemhost "$$@"\n' \
	  "$(CURDIR)" "$(CURDIR)" > $(VENV)/bin/kmemctl && chmod +x $(VENV)/bin/kmemctl
	touch $@

# The suite once per target: the unix port with an RP2040- and an ESP32-sized heap, the
# virtual board (kmem deployed as .mpy into its flash through mpremote, as on a real board),
# then the emulated Cortex-M0 board (test-qemu). Tests that do not use the board (marker
# host_only, set automatically) run only in the first.
test: mpy-check $(STAMP)
	$(PY) -m pytest --target unix:rpi_pico
	$(PY) -m pytest --target unix:esp32_generic -m "not host_only" --heap-margin 2048
	$(PY) -m pytest --target vboard:rpi_pico -m "not host_only"
	$(MAKE) --no-print-directory test-qemu

# The suite on the emulated board: kmem as a ROMFS image, then frozen into the firmware.
# Skipped, and said so, without the ARM toolchain, QEMU or a MicroPython source; with
# KMEM_REQUIRE_QEMU=1 (.ci/run) a skip is an error.
.PHONY: test-qemu qemu-firmware qemu
test-qemu: $(STAMP)
	@why=$$($(KMEMHOST).qemu check) || { \
	  if [ -n "$(KMEM_REQUIRE_QEMU)" ]; then echo "test-qemu: required, but $$why" >&2; exit 1; fi; \
	  echo "*** SKIPPED the qemu targets: $$why"; echo "*** (README: The emulated board)"; exit 0; }; \
	$(MAKE) --no-print-directory qemu-firmware && \
	$(PY) -m pytest --target qemu --deploy romfs -m "not host_only" && \
	$(PY) -m pytest --target qemu --deploy frozen -m "not host_only"

# Build the emulated board's firmware into build/qemu/ (firmware.elf, firmware-kmem.elf):
#   make qemu-firmware [MICROPYTHON_SRC=~/micropython or FILE.tar.gz]
# (default: ../shared/micropython/*.tar.gz). Needs gcc-arm-none-eabi, libnewlib-arm-none-eabi.
qemu-firmware: $(STAMP)
	$(KMEMHOST).qemu build $(if $(MICROPYTHON_SRC),--src $(MICROPYTHON_SRC))

# Start the emulated board; prints its pty: make qemu [QEMU_ARGS="--romfs" or "--frozen"]
qemu: qemu-firmware
	$(KMEMHOST).qemu run --pty-file build/qemu/pty $(QEMU_ARGS)

# Every firmware .py must compile for the real boards (armv6m: rpi_pico, xtensawin: esp32),
# and the block helpers inlined into the hot paths must match firmware/blocks/tlsf.blocks.
mpy-check: $(STAMP)
	$(KMEMHOST).inline --check
	$(KMEMHOST).build --check --arch armv6m --arch xtensawin

# Static checks (tools/kmemhost/lint.py): ruff over everything, pyright over the host code
# and over firmware/ once per board profile against its micropython stubs. The tools come
# from requirements-lint.txt, the stubs from each boards/<profile>.json (both from PyPI).
LINT_STAMP := $(VENV)/.installed-lint
$(LINT_STAMP): requirements-lint.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-lint.txt
	touch $@

lint: $(LINT_STAMP)
	$(KMEMHOST).lint

demo: $(STAMP)
	$(KMEMHOST).run firmware/examples/demo.py

repl: $(STAMP)
	$(KMEMHOST).run

# Flash MicroPython itself by mpflash (requirements-flash.txt, installed into .venv on first
# use): make flash BOARD=rpi_pico|esp32_generic PORT=/dev/ttyACM0 [DRY_RUN=1: print the
# command only]. MOUNT=dir instead of PORT: a UF2 board already in BOOTSEL mode, its drive
# at dir. FIRMWARE=file: a local image (esptool over PORT, or a copy onto MOUNT).
FLASH_ARGS = $(if $(BOARD),--board $(BOARD)) $(if $(PORT),--port $(PORT)) \
    $(if $(FIRMWARE),--firmware $(FIRMWARE)) $(if $(MOUNT),--mount $(MOUNT)) \
    $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

.PHONY: flash
flash: $(STAMP)
	$(KMEMHOST).flash $(FLASH_ARGS)

# Put kmem on a board: make deploy [PORT=auto|/dev/ttyACM0|id:SERIAL] [BOARD=rpi_pico]
#   [DEPLOY=flash|ram|mount]. flash: .mpy for the board's arch in /lib/kmem, changed files
#   only; ram: a RAM filesystem at /ram until the next reset; mount: served from this
#   checkout while mpremote runs. Falls back to .py (and says so) if the board's .mpy
#   version or arch does not match mpy-cross. Also: python -m mpremote mip install ./package.json
DEPLOY ?= flash
DEPLOY_ARGS = --port $(or $(PORT),auto) $(if $(BOARD),--board $(BOARD)) --deploy $(DEPLOY)

.PHONY: deploy
deploy: $(STAMP)
	$(KMEMHOST).deploy $(DEPLOY_ARGS)

# The long differential fuzz (host_tests/test_fuzz.py, KMEM_FUZZ_LONG=1): fresh random
# sequences each run, progress every 10 s, then operations, sequences, ops/s and per kind:
#   make fuzz [TARGET=unix:rpi_pico (default)|vboard:rpi_pico|qemu|port:/dev/ttyACM0]
#   [KMEM_FUZZ_EXAMPLES=N sequences]
.PHONY: fuzz
fuzz: $(STAMP) $(if $(filter qemu,$(TARGET)),qemu-firmware)
	KMEM_FUZZ_LONG=1 $(PY) -m pytest host_tests/test_fuzz.py -s -q --target $(or $(TARGET),unix:rpi_pico)

# Speed, worst case, occupancy and footprint on a target (tools/kmemhost/bench.py):
#   make bench [TARGET=unix|vboard|qemu|port:/dev/ttyACM0] [BENCH_ARGS="--rounds 9 --reference"]
# prints a table with PASS/FAIL per target figure and writes bench/results/*.json.
.PHONY: bench
bench: $(STAMP)
	$(if $(filter qemu,$(TARGET)),$(MAKE) --no-print-directory qemu-firmware &&) \
	$(KMEMHOST).bench --target $(or $(TARGET),unix) $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache
	find tools host_tests -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Virtual board: the unix port behind a pty, used like a USB board; Ctrl-C stops it.
# kmem is already deployed on it (--with-kmem), so `import kmem` works at once.
# make vboard [BOARD=rpi_pico|esp32_generic|unix] [VBOARD_ARGS="--flash DIR --trace"]
# Prints the pty path, also in build/vboard/BOARD/pty:
#   mpremote connect $$(cat build/vboard/rpi_pico/pty) repl
.PHONY: vboard
vboard: $(STAMP)
	$(PY) tools/vboard --profile $(or $(BOARD),rpi_pico) --with-kmem --pty-file build/vboard/$(or $(BOARD),rpi_pico)/pty $(VBOARD_ARGS)
