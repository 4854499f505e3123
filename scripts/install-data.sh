#!/bin/sh
# Install Debian's dataset-fashion-mnist when it is missing, we are root and apt works.
# Anything else is skipped quietly: sanitas then downloads Fashion-MNIST (with SHA-256
# checks) on first use, or uses $SANITAS_DATA/fashion-mnist/.
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; then
        echo "installed dataset-fashion-mnist (Debian package)"
    fi
fi
exit 0
