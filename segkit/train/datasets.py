"""The COCO dataset segkit registers with mmseg: label maps from COCO annotations (cached), any
list of COCO sources, and the samples RandomMosaic draws from.
"""

from __future__ import annotations

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from segkit.core.classes import ClassTable
from segkit.train.sources import data_list


@DATASETS.register_module()
class CocoSegDataset(BaseSegDataset):
    """Semantic segmentation from COCO files: `sources` is a list of COCO files (or dicts
    `ann_file` / `data_root`); `metainfo` carries the class names and palette."""

    METAINFO: dict = {}

    def __init__(self, sources, data_root=None, subset_size=None, **kwargs):
        self.sources = list(sources)
        self.source_root = data_root
        self.subset_size = subset_size
        super().__init__(data_root=None, **kwargs)

    def load_data_list(self):
        meta = self._metainfo
        table = ClassTable(tuple(meta["classes"]), tuple(map(tuple, meta["palette"])))
        infos = data_list(self.sources, table, self.source_root)
        if self.subset_size:  # debug mode: a fixed, evenly spread subset
            step = max(1, len(infos) // self.subset_size)
            infos = infos[::step][: self.subset_size]
        return infos

    def prepare_data(self, idx):
        """The pipeline on one image; a transform that mixes several images (mmseg's
        RandomMosaic: `get_indices`) gets them in `mix_results`, each loaded through the
        transforms before it (what mmseg's MultiImageMixDataset wrapper does, without
        wrapping: the dataset config stays one CocoSegDataset)."""
        transforms = getattr(self.pipeline, "transforms", [])
        if not any(hasattr(t, "get_indices") for t in transforms):
            return super().prepare_data(idx)
        results = self.get_data_info(idx)
        done = []
        for transform in transforms:
            if hasattr(transform, "get_indices"):
                mixes = []
                # modulo: RandomMosaic draws randint(0, len), one past the last image
                for other in transform.get_indices(self):
                    mix = self.get_data_info(int(other) % len(self))
                    for step in done:
                        mix = step(mix)
                    mixes.append(mix)
                results["mix_results"] = mixes
            results = transform(results)
            if results is None:
                return None
            results.pop("mix_results", None)
            done.append(transform)
        return results
