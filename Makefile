# kmem: MicroPython memory manager. Logic lives in tools/kmemhost; recipes stay short.
VENV := .venv
PY := $(VENV)/bin/python
# MICROPYTHON=/path/to/micropython overrides the unix port from the venv.
MICROPYTHON ?= $(abspath $(VENV))/bin/micropython
export MICROPYTHON
KMEMHOST := PYTHONPATH=tools $(PY) -m kmemhost
STAMP := $(VENV)/.installed

.PHONY: venv test mpy-check demo repl clean distclean

venv: $(STAMP)

# Re-installs whenever requirements.txt changes.
$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

test: mpy-check $(STAMP)
	$(PY) -m pytest --target unix:rpi_pico
	$(PY) -m pytest --target unix:esp32_generic

# Every firmware .py must compile for the real boards (armv6m: rpi_pico, xtensawin: esp32).
mpy-check: $(STAMP)
	$(KMEMHOST).build --check --arch armv6m --arch xtensawin

demo: $(STAMP)
	$(KMEMHOST).run firmware/examples/demo.py

repl: $(STAMP)
	$(KMEMHOST).run

# Flash MicroPython itself: make flash BOARD=rpi_pico|esp32_generic [PORT=/dev/ttyUSB0]
#   [FIRMWARE=file] [MOUNT=dir of the RPI-RP2 drive] [FLASHER=mpflash] [DRY_RUN=1]
FLASH_ARGS = $(if $(BOARD),--board $(BOARD)) $(if $(PORT),--port $(PORT)) \
    $(if $(FIRMWARE),--firmware $(FIRMWARE)) $(if $(MOUNT),--mount $(MOUNT)) \
    $(if $(FLASHER),--flasher $(FLASHER)) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

.PHONY: flash
flash: $(STAMP)
	$(KMEMHOST).flash $(FLASH_ARGS)

clean:
	rm -rf build .pytest_cache
	find tools host_tests -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
