"""Reads attunet's summary.json the way scripts written for nnU-Net v2 read nnU-Net's own (json.load, then
summary['foreground_mean']['Dice'], summary['mean'][str(label)]['Dice'], and per element of
summary['metric_per_case'] its metrics[str(label)]: Dice, IoU, TP, FP, FN, TN, n_pred, n_ref), and checks every
value against numpy.

  check_summary_json.py evaluate SUMMARY LABELS         the label maps read back from the files each case names
                                                        (nibabel): every count and metric recomputed
  check_summary_json.py cv SUMMARY STORE LABELS          per model's evaluation: the reference counts from the case
                                                        store's label maps (h5py), the rest from the counts

LABELS: the foreground label values, comma-separated. attunet's empty-mask rule: Dice and IoU are 1 when neither
mask has the label (nnU-Net writes NaN there), so every case counts in every mean. attunet's own part, where the
file has it: per_case IoU and RVD from the same counts ((n_pred - n_ref) / max(n_ref, 1)), the class means of IoU,
RVD and NSD, and no case both scored and in missing_cases.
"""
import json
import sys

import numpy as np

NNUNET_KEYS = {'Dice', 'IoU', 'TP', 'FP', 'FN', 'TN', 'n_pred', 'n_ref'}


def close(a, b, what, tol=1e-9):
    assert abs(a - b) <= tol * max(1.0, abs(b)), f'{what}: {a} != {b}'


def expected_overlap(tp, fp, fn):
    """Dice as attunet computes it (2·TP / (n_pred + n_ref + 1e-6)) and IoU, 1 for a label in neither mask."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn + 1e-6), tp / (tp + fp + fn)


def check_evaluation(ev, labels, reference_of, prediction_of=None):
    """ev: one evaluation object; reference_of(case) / prediction_of(case): the label maps as numpy arrays."""
    cases = ev['metric_per_case']
    assert len(cases) == ev['cases'], (len(cases), ev['cases'])
    for case in cases:
        assert isinstance(case['prediction_file'], str) and isinstance(case['reference_file'], str), case
        assert set(case['metrics']) == {str(label) for label in labels}, case['metrics'].keys()
        ref = reference_of(case)
        pred = prediction_of(case) if prediction_of else None
        for label in labels:
            m = case['metrics'][str(label)]
            assert set(m) == NNUNET_KEYS, m.keys()
            tp, fp, fn, tn = m['TP'], m['FP'], m['FN'], m['TN']
            assert all(isinstance(v, int) for v in (tp, fp, fn, tn, m['n_pred'], m['n_ref'])), m
            r = ref == label
            assert m['n_ref'] == int(r.sum()) == tp + fn, (case['reference_file'], label, m)
            assert m['n_pred'] == tp + fp, m
            assert tn == ref.size - tp - fp - fn, (tn, ref.size, m)
            if pred is not None:
                p = pred == label
                assert (tp, fp, fn, tn) == (int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum()),
                                            int((~p & ~r).sum())), (case['prediction_file'], label, m)
            dice, iou = expected_overlap(tp, fp, fn)
            close(m['Dice'], dice, f"{case['case_id']} label {label} Dice")
            close(m['IoU'], iou, f"{case['case_id']} label {label} IoU")
    means = {}
    for label in labels:
        mean = ev['mean'][str(label)]
        for key in NNUNET_KEYS:
            close(mean[key], float(np.mean([c['metrics'][str(label)][key] for c in cases])), f'mean {label} {key}')
        means[label] = mean
        ours = [c for c in ev['classes'] if c['label'] == label][0]
        close(ours['metrics']['dice']['mean'], mean['Dice'], f'classes {label} dice mean vs mean Dice')
    for key in NNUNET_KEYS:
        close(ev['foreground_mean'][key], float(np.mean([means[label][key] for label in labels])), f'foreground_mean {key}')
    assert 0 <= ev['foreground_mean']['Dice'] <= 1
    if 'per_case' in ev:  # attunet's part (absent in files written before it): IoU and RVD from the counts
        rows = {(r['case_id'], r['label']): r for r in ev['per_case']}
        assert len(rows) == len(ev['per_case']) == len(cases) * len(labels), len(ev['per_case'])
        for case in cases:
            for label in labels:
                r, m = rows[(case['case_id'], label)], case['metrics'][str(label)]
                close(r['dice'], m['Dice'], f"{case['case_id']} label {label} per_case dice")
                close(r['iou'], m['IoU'], f"{case['case_id']} label {label} per_case iou")
                close(r['rvd'], (m['n_pred'] - m['n_ref']) / max(m['n_ref'], 1), f"{case['case_id']} label {label} rvd")
                if 'nsd' in r:
                    assert 0 <= r['nsd'] <= 1 and r['nsd_tolerance'] >= 0, r
        for c in ev['classes']:
            for key in ('iou', 'rvd', 'nsd'):
                if key in c['metrics']:
                    values = [rows[(case['case_id'], c['label'])][key] for case in cases]
                    close(c['metrics'][key]['mean'], float(np.mean(values)), f"classes {c['label']} {key} mean")
            assert ('nsd' in c['metrics']) == ('nsd_tolerance' in c), c.keys()
    scored = {case['case_id'] for case in cases}
    assert not scored & set(ev.get('missing_cases', [])), 'a missing case was scored'


def main(argv):
    mode, path, *rest = argv
    with open(path) as f:
        summary = json.load(f)
    if mode == 'evaluate':
        import nibabel as nib
        labels = [int(x) for x in rest[0].split(',')]

        def read(name):
            return np.rint(np.asanyarray(nib.load(name).dataobj)).astype(np.int64)
        check_evaluation(summary, labels, lambda c: read(c['reference_file']), lambda c: read(c['prediction_file']))
        print(f"{path}: {summary['cases']} case(s), foreground mean Dice {summary['foreground_mean']['Dice']:.4f}")
    elif mode == 'cv':
        import h5py
        store, labels = rest[0], [int(x) for x in rest[1].split(',')]
        with h5py.File(store, 'r') as f:
            ids = sorted(f['cases'].keys())
            refs = {i: np.array(f['cases'][i]['label']) for i in ids}
        assert summary['models'], 'no model'
        for model in summary['models']:
            ev = model['evaluation']
            assert sorted(c['case_id'] for c in ev['metric_per_case']) == ids, 'every case tested once'
            for c in ev['metric_per_case']:
                assert c['reference_file'] == f"{store}#{c['case_id']}", c['reference_file']
            check_evaluation(ev, labels, lambda c: refs[c['case_id']])
            print(f"{path}: {model['model']}: {ev['cases']} case(s), foreground mean Dice {ev['foreground_mean']['Dice']:.4f}")
    else:
        raise SystemExit(f'unknown mode {mode}')


if __name__ == '__main__':
    main(sys.argv[1:])
