"""The figures the paper reports (Ben-Cohen et al., ICCV 2021), in percent, keyed as
`evaluation.evaluate_scores` keys its results ("zsl/P@3", "gzsl/mAP", ...), so a run's
figures print beside them in the same layout.

- `TABLE1`: "Ours (M=7)" on NUS-WIDE (K = 3, 5) and Open Images (K = 10, 20).
- `TABLE2`: "Ours (M=2)" on MS-COCO 48/17 (K = 3; no mAP reported).
- `TABLE3`: the ablation's columns on NUS-WIDE, mAP only ("GZS" and "ZS" in the paper).
"""


def _row(ks, zsl, gzsl):
    """{"zsl/P@K", ..., "gzsl/mAP"} from (P, R, F1) per K, then mAP when reported, per task."""
    figures = {}
    for task, values in (("zsl", zsl), ("gzsl", gzsl)):
        values = list(values)
        for k in ks:
            for metric in ("P", "R", "F1"):
                figures[f"{task}/{metric}@{k}"] = values.pop(0)
        if values:
            figures[f"{task}/mAP"] = values.pop(0)
    return figures


# Table 1, "Ours (M=7)".
TABLE1 = {
    "nus_wide": _row((3, 5), zsl=(24.2, 41.3, 30.5, 18.8, 53.4, 27.8, 25.9),
                     gzsl=(27.7, 13.9, 18.5, 23.0, 19.3, 21.0, 12.1)),
    "open_images": _row((10, 20), zsl=(6.1, 47.0, 10.7, 4.4, 68.1, 8.3, 62.9),
                        gzsl=(35.3, 40.8, 37.8, 23.6, 54.5, 32.9, 75.3)),
}
# Table 2, "Ours (M=2)".
TABLE2 = {"coco": _row((3,), zsl=(26.3, 65.3, 37.5), gzsl=(59.0, 60.8, 59.9))}

# Table 3: flagfile name (configs/ablation_NAME.flags) -> (the paper's column label, GZS mAP,
# ZS mAP). "orig" is Fast0Tag's original implementation, which no flagfile trains.
TABLE3 = {
    "orig": ("Orig", 3.7, 15.1),
    "impl": ("Impl.", 9.7, 21.6),
    "base": ("Base.", 9.5, 20.6),
    "a": ("a", 10.2, 22.7),
    "b": ("b", 10.6, 22.2),
    "c": ("c", 11.0, 23.8),
    "d": ("d", 12.2, 25.1),
    "f": ("f", 11.8, 25.8),
    "ours": ("Ours", 12.1, 25.9),
}
PAPER_ONLY = ("orig",)


def reported(dataset):
    """(the paper's table, its row's figures) for a dataset: ("Table 1", {...}) for nus_wide
    and open_images, ("Table 2", {...}) for coco."""
    if dataset in TABLE1:
        return "Table 1", TABLE1[dataset]
    if dataset in TABLE2:
        return "Table 2", TABLE2[dataset]
    raise ValueError(f"The paper reports no results for dataset {dataset!r}; it has {sorted({**TABLE1, **TABLE2})}.")
