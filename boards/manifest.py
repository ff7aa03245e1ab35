# MicroPython freeze manifest: custom firmware with kmem frozen in (imported from flash,
# no files to copy, less RAM). With KMEM=the absolute path of this repository, build in a
# MicroPython checkout:
#   cd ports/rp2   && make BOARD=RPI_PICO      FROZEN_MANIFEST=$KMEM/boards/manifest.py
#   cd ports/esp32 && make BOARD=ESP32_GENERIC FROZEN_MANIFEST=$KMEM/boards/manifest.py
# then flash the image it built (from this repository):
#   make flash BOARD=rpi_pico FIRMWARE=.../ports/rp2/build-RPI_PICO/firmware.uf2
#   make flash BOARD=esp32_generic PORT=/dev/ttyUSB0 \
#        FIRMWARE=.../ports/esp32/build-ESP32_GENERIC/firmware.bin
# (on esp32, firmware.bin is bootloader + partition table + app, written at 0x1000 like
#  the released images; micropython.bin is the app alone and is not what flash wants).
#
# Evaluated by MicroPython's tools/manifestfile.py with this file's directory as the
# current directory, so relative paths are relative to boards/. $(PORT_DIR) is the
# port being built (ports/rp2, ports/esp32). The port's mpy-cross flags
# (-march=armv6m / -march=xtensawin) compile kmem's viper functions to machine code.

# Keep everything the stock firmware freezes (asyncio, neopixel, ...). RPI_PICO and
# ESP32_GENERIC have no board manifest of their own; for a board that has one
# (RPI_PICO_W, ...) include "$(BOARD_DIR)/manifest.py" instead.
# (The emulated board's build includes this file with port_manifest=False: the qemu port
# has no boards/manifest.py.)
options.defaults(port_manifest=True)
if options.port_manifest:
    include("$(PORT_DIR)/boards/manifest.py")

# firmware/kmem/**/*.py -> frozen modules kmem/__init__.py, kmem/tlsf.py, ...
package("kmem", base_path="../firmware")
