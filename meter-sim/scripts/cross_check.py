#!/usr/bin/env python3
"""Reads every model and point of a running meter-sim home with pysunspec2, an independent
SunSpec client (pip install pysunspec2), and prints them.

Usage: python3 meter-sim/scripts/cross_check.py [--json] [--set-limit PCT[:RVRT_SECONDS]] [port] [host]

--set-limit first writes the inverter's model 123 power limit with pysunspec2 (WMaxLimPct in
percent, scaled by the WMaxLimPct_SF the device reports; WMaxLimPct_RvrtTms; WMaxLim_Ena = 1).
--json prints one JSON object instead of text:
  {"<unit>": {"models": [ids], "points": {"<model>": {"<point>": {"value": raw, "cvalue": scaled}}}}
   or {"<unit>": {"error": "..."}} for a unit the home does not have.
The meter-sim integration test tests/pysunspec.rs runs this script with both options.
"""
import argparse
import json

import sunspec2.modbus.client as client

parser = argparse.ArgumentParser()
parser.add_argument("port", nargs="?", type=int, default=15020)
parser.add_argument("host", nargs="?", default="127.0.0.1")
parser.add_argument("--json", action="store_true")
parser.add_argument("--set-limit")
args = parser.parse_args()

out = {}
for unit, name in ((1, "inverter"), (2, "battery"), (3, "meter")):
    device = client.SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr=args.host, ipport=args.port)
    try:
        device.scan()
    except Exception as error:  # a home without this device answers exception 0x0B
        out[str(unit)] = {"error": str(error)}
        if not args.json:
            print(f"unit {unit} ({name}): {error}")
        continue
    ids = [m for m in device.models if isinstance(m, int)]
    if unit == 1 and args.set_limit:
        pct, _, rvrt = args.set_limit.partition(":")
        controls = device.models[123][0]
        controls.read()
        controls.WMaxLimPct.cvalue = float(pct)
        controls.WMaxLimPct_RvrtTms.value = int(rvrt or 0)
        controls.WMaxLim_Ena.value = 1
        controls.write()
    points = {}
    if not args.json:
        print(f"unit {unit} ({name}): models {ids}")
    for model_id in ids:
        model = device.models[model_id][0]
        model.read()
        points[str(model_id)] = {
            n: {"value": p.value, "cvalue": p.cvalue} for n, p in model.points.items()
        }
        if not args.json:
            values = {n: p.cvalue for n, p in model.points.items() if p.cvalue is not None}
            print(f"  {model_id}: {values}")
    out[str(unit)] = {"models": ids, "points": points}
    device.close()
if args.json:
    print(json.dumps(out, default=str))
