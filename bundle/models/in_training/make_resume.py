"""Builds a resumable checkpoint.pt from a shipped model file: network and EMA from the model, a fresh optimizer
(and LR scheduler), the trainer at the model's iteration, and a card whose provenance names the regenerated data.
usage: python make_resume.py MODEL.pt OUT_DIR [bundle_dir]"""
import json, os, sys, datetime
import torch
model_path, out_dir = sys.argv[1], sys.argv[2]
bundle = sys.argv[3] if len(sys.argv) > 3 else "/work/main/bundle"
sys.path.insert(0, bundle)
import scripts.data, scripts.provenance
datalist = os.path.join(bundle, "data", "datalist_2d.json")
cases = scripts.data.load_cases(datalist, "training", os.path.join(bundle, "data"), True, 3)
fp = scripts.provenance.data_fingerprint(datalist, cases)
m = torch.load(model_path, map_location="cpu", weights_only=True)
card = m["card"]; prov = card["provenance"]
it, ep, ipe = prov["iterations"], prov["epochs"], prov["iterations_per_epoch"]
if prov["data"]["files_sha256"] != fp["files_sha256"] or prov["data"]["datalist_sha256"] != fp["datalist_sha256"]:
    prov.setdefault("data_history", []).append({"until_iteration": it, **prov["data"]})
    prov["data"] = fp
prov.setdefault("optimizer_restarted", []).append({
    "iteration": it,
    "why": "the run's checkpoint was lost with the machine between sessions; resumed from the model file's "
           "network and EMA weights with a fresh AdamW state (constant LR)",
    "date": datetime.date.today().isoformat()})
state = {"network": m["model"], "ema": m["ema"], "card": card,
         "trainer": {"iteration": it, "epoch_length": ipe, "max_epochs": ep}}
os.makedirs(out_dir, exist_ok=True)
torch.save(state, os.path.join(out_dir, "checkpoint.pt"))
print(json.dumps({"iteration": it, "epoch": ep, "data": prov["data"], "data_history": prov.get("data_history")}, indent=1))
