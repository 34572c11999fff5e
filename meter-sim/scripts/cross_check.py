#!/usr/bin/env python3
"""Reads every model and point of a running meter-sim home with pysunspec2, an independent
SunSpec client (pip install pysunspec2), and prints them.

Usage: python3 meter-sim/scripts/cross_check.py [port] [host]
"""
import sys

import sunspec2.modbus.client as client

port = int(sys.argv[1]) if len(sys.argv) > 1 else 15020
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
for unit, name in ((1, "inverter"), (2, "battery"), (3, "meter")):
    device = client.SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr=host, ipport=port)
    try:
        device.scan()
    except Exception as error:  # a home without this device answers exception 0x0B
        print(f"unit {unit} ({name}): {error}")
        continue
    ids = [m for m in device.models if isinstance(m, int)]
    print(f"unit {unit} ({name}): models {ids}")
    for model_id in ids:
        model = device.models[model_id][0]
        model.read()
        values = {n: p.cvalue for n, p in model.points.items() if p.cvalue is not None}
        print(f"  {model_id}: {values}")
    device.close()
