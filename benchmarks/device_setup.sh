# Source this on a GPU machine that has Python 3.12 and a CUDA torch but no package registry:
#
#     source benchmarks/device_setup.sh            # from the repository root
#
# It installs the wheels in .whl/ (git-ignored; see benchmarks/README.md for how they are
# downloaded and built) into $SEGKIT_SITE (default /tmp/site) without resolving anything, and
# puts that folder and the checkout on PYTHONPATH, so `python3 -c "import segkit.train"`,
# `python3 -m papermill` and the benchmarks work. The machine's own torch, numpy, opencv,
# pandas, matplotlib, scipy, scikit-learn, tensorboard, ... are used as they are.
#
# .whl/ holds one version of each of: onedl-mmengine 0.10.12, onedl-mmsegmentation 1.4.2,
# onedl-mmcv 2.3.6 (pure Python: no compiled ops), onedl-mmdetection 3.5.1, pycocotools,
# shapely, ftfy, addict, yapf, termcolor, terminaltables, prettytable, platformdirs,
# wcwidth, the EfficientNet-Lite0 packages, imagehash + pywavelets, and papermill with
# nbclient / nbformat / jupyter_client / jupyter_core / ipykernel / ipython and their needs.
# Left out on purpose: debugpy and jedi (optional for ipykernel / ipython, 10 MB together),
# imaug (mmdet imports it only for lane-detection transforms), opencv-python (the machine's
# opencv-python-headless provides cv2).

_segkit_site="${SEGKIT_SITE:-/tmp/site}"
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "device_setup.sh: no wheels in $PWD/.whl (run it from the repository root)" >&2
    return 1 2>/dev/null || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$_segkit_site" .whl/*.whl || { return 1 2>/dev/null || exit 1; }
export PYTHONPATH="$_segkit_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$_segkit_site/bin:$PATH"
unset _segkit_site
