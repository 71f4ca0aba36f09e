#!/usr/bin/env python3
"""Independent freezer-physics generator for labelled `freezer_health` events.

Written for issue 13 without reading agentd's simulator, model-building scripts,
labelled-set helpers, models, rules or prompts.  Its physics is its own:

* a two-node thermal model of a walk-in freezer: the air (small heat capacity,
  what the probe measures) and the stored product (large capacity, what food
  safety is about), coupled to each other; heat leaks in through the walls from
  a warehouse ambient that follows a daily cycle (hot docks and heatwaves too);
* a thermostat with hysteresis and an anti-short-cycle timer switches the
  compressor; its cooling capacity falls with ambient temperature, a fouled
  condenser, ice on the evaporator and a seizing compressor;
* door events: short picks, deliveries with the door propped (warm stock
  added), cleaning crews (sometimes with the unit switched off), a door left
  ajar; open doors bring warm humid air in, which also frosts the coil;
* scheduled defrost cycles (heater on, drip time) warm the box on purpose and
  melt the ice; a defrost-timer fault plus a leaking gasket lets ice build up,
  choking airflow and raising compressor current;
* compressor faults: a dead compressor (0 A while the thermostat calls for
  cooling) and a seizing one (current climbing, erratic, overload trips);
* probe faults (open or short circuit, erratic) and ordinary sensor noise,
  current-clamp noise, jittered and occasionally late gateway reports.

Every ~5 minutes the gateway reports (air temperature, seconds the door was open
since the last report, instantaneous compressor current).  Each report is labelled
from the simulated ground truth (compressor health, ice load, product
temperature, whether the door is open by accident or on purpose, defrost phase),
the way an experienced operator who knew that truth would act.  Moments where
the truth is not yet visible, or sits on a boundary (an ice load or product
temperature right at the limit, a fault just starting), are not sampled.

Stdlib only, fixed seed, deterministic:
    python3 eval/freezer_physics.py --out eval/freezer_physics.jsonl
"""

import argparse
import json
import math
import random

SEED = 1313
DT = 0.25            # simulation step, minutes
SIM_HOURS = 40
N_UNITS = 72
SET_POINT = -20.0

# Scenario mix (one per unit); everything else (deliveries, picks, cleaning,
# defrost, doors left ajar, heat) happens in every unit at random.
SCENARIOS = [
    ("normal", 20), ("heatwave", 6), ("fouled_condenser", 7), ("icing", 12),
    ("compressor_dead", 11), ("compressor_seizing", 10), ("sensor_fault", 6),
]

# How many samples of each label, and the mix of situations within a label.
TARGETS = {
    "none": [("normal_on", 14), ("normal_off", 16), ("defrost_cycle", 22),
             ("delivery", 20), ("cleaning", 10), ("cleaning_unit_off", 6),
             ("recovery", 15), ("picks", 12), ("hot_ok", 10)],
    "alert": [("door_ajar", 24), ("delivery_overrun", 10), ("hot_overload", 13),
              ("sensor_fault", 9), ("cleaning_overrun", 4), ("warm", 5)],
    "defrost": [("icing", 50)],
    "shutdown": [("compressor_dead", 30), ("seizing", 18), ("tripped", 12)],
}


# --------------------------------------------------------------------------
# notes staff or the gateway attach (probability of a note, informative pool)
NOTES = {
    "defrost_cycle": (0.7, [
        "defrost cycle running", "gateway: DEFROST ACTIVE", "scheduled defrost",
        "defrost 2 of 4 today", "def in progress", "coil defrost on, back in 30",
        "gateway: defrost heater ON", "defrosting, normal", "auto defrost",
        "gateway: DEFROST (drip)", "Defrost running - ignore temp",
    ]),
    "delivery": (0.75, [
        "loading the Tuesday delivery", "delivery being put away, door propped",
        "putting away the Brakes order", "pallets coming in, door open",
        "big delivery today, door will be open a while", "unloading lorry",
        "door propped for delivery", "restocking from the morning drop",
        "goods in - frozen veg pallets", "Bidfood delivery being racked",
        "delivery, 6 pallets", "door open for putaway",
    ]),
    "cleaning": (0.8, [
        "cleaning crew inside", "deep clean of floor, door open",
        "cleaners in the freezer", "weekly clean, door propped",
        "mopping the freezer floor", "cleaning shelves, back soon",
    ]),
    "cleaning_unit_off": (0.9, [
        "unit switched off for cleaning", "compressor isolated while we clean",
        "cleaning - refrigeration off at the panel", "deep clean, unit OFF",
        "isolated for coil wash, back on in 30 min",
    ]),
    "recovery": (0.35, [
        "delivery done, door shut", "finished putting away", "cleaning finished",
        "all put away now", "door closed again", "done loading",
    ]),
    "picks": (0.12, [
        "picking orders", "grabbing stock for the shop", "order picking",
        "pulling stock for the morning run",
    ]),
    "hot_ok": (0.3, [
        "heatwave, dock is 35 degrees", "hot one today", "very warm in the warehouse",
        "roller doors open, warm out",
    ]),
    "normal_on": (0.12, []), "normal_off": (0.12, []),
    "door_ajar": (0.2, [
        "door keeps popping open", "latch is sticky", "gateway: door contact open",
        "strip curtain torn",
    ]),
    "delivery_overrun": (0.6, [
        "still unloading, lorry was late", "delivery taking ages, door propped",
        "huge delivery, been going an hour", "putting away the Brakes order",
        "loading the Tuesday delivery", "door propped for delivery",
    ]),
    "hot_overload": (0.35, [
        "heatwave, dock is 35 degrees", "condenser fan looks dusty",
        "hot one today", "unit running non stop", "outdoor unit in full sun",
    ]),
    "warm": (0.2, []),
    "cleaning_overrun": (0.7, [
        "unit switched off for cleaning", "cleaning crew inside", "deep clean, unit OFF",
        "cleaners in the freezer", "coil wash, unit isolated",
    ]),
    "sensor_fault": (0.45, [
        "gateway: probe reading unstable", "probe cable chewed?",
        "gateway: sensor out of range", "temp display flickering",
        "gateway: probe 1 open circuit",
    ]),
    "icing": (0.3, [
        "ice on the fan guard", "thick frost on the coil", "evaporator looks white",
        "fans sound strained", "ice build-up on the ceiling unit",
        "frost everywhere near the door",
    ]),
    "compressor_dead": (0.3, [
        "unit sounds quiet", "no hum from the condenser", "outdoor unit not running",
        "breaker tripped?", "fan running but compressor not starting",
    ]),
    "seizing": (0.35, [
        "grinding noise from the compressor", "loud clunking out back",
        "compressor very hot to touch", "rattling from the condensing unit",
        "lights dim when it kicks in",
    ]),
    "tripped": (0.35, [
        "breaker tripped twice today", "compressor keeps cutting out",
        "overload tripped again", "burning smell near the condensing unit",
    ]),
}

NOISE_NOTES = [
    "all good", "checked temps, fine", "weekly check done", "temp log signed",
    "new starter on shift today", "forklift battery charging", "order 4471 picked",
    "stocktake friday", "ok", "shift handover", "waiting on invoice",
    "Mike on lates", "see whiteboard", "audit next week", "fine", "-",
    "gateway: heartbeat", "gateway fw 2.3.1", "labels printed", "x",
]


# --------------------------------------------------------------------------
class Unit:
    def __init__(self, uid, scenario, rng):
        self.uid = uid
        self.scenario = scenario
        r = rng
        self.UA = r.uniform(0.008, 0.012)          # wall leak, 1/min (air node)
        self.k = r.uniform(0.07, 0.09)             # air <-> product coupling
        self.Q0 = r.uniform(1.1, 1.4)              # cooling, degC/min of air
        self.UAd = r.uniform(0.065, 0.09)          # open-door air exchange
        self.Cp = r.uniform(18.0, 35.0)            # product heat capacity (air=1)
        self.I0 = r.uniform(4.6, 5.4)              # nominal running current
        self.cut_in = SET_POINT + r.uniform(1.2, 2.0)
        self.cut_out = SET_POINT - r.uniform(1.2, 2.0)
        self.bias = r.uniform(-0.6, 0.6)           # probe placement bias
        self.noise = r.uniform(0.12, 0.3)
        self.humid = r.uniform(0.6, 1.4)
        self.cond = 1.0
        self.gasket = 0.0
        self.defrost_enabled = True
        self.defrost_every = r.choice([6, 8]) * 60
        self.defrost_len = r.uniform(20, 30)
        self.defrost_heat = r.uniform(0.8, 1.2)
        self.clock0 = r.uniform(0, 1440)           # time of day at t=0
        amb_base = r.uniform(10, 22)
        amb_amp = r.uniform(2, 6)
        if scenario == "heatwave":
            amb_base = r.uniform(29, 34)
            amb_amp = r.uniform(3, 6)
        elif scenario == "fouled_condenser":
            amb_base = r.uniform(24, 31)
            amb_amp = r.uniform(3, 6)
            self.cond = r.uniform(0.5, 0.68)
        self.amb_base, self.amb_amp = amb_base, amb_amp
        self.amb_phase = r.uniform(-60, 60)
        if scenario == "icing":
            self.defrost_enabled = r.random() < 0.3   # else timer fault: no defrosts
            self.gasket = r.uniform(0.25, 0.8)
            self.humid = r.uniform(0.9, 1.5)
        self.dead_at = None
        self.seize_at = None
        self.seize_ramp = None
        if scenario == "compressor_dead":
            self.dead_at = r.uniform(12, 36) * 60
        elif scenario == "compressor_seizing":
            self.seize_at = r.uniform(8, 30) * 60
            self.seize_ramp = r.uniform(120, 420)
        self.sensor_fault = None
        if scenario == "sensor_fault":
            self.sensor_fault = (r.uniform(6, 30) * 60, r.choice(["open", "short", "erratic", "erratic"]))
        self.events = []      # (start, end, kind, extra)
        self._plan(r)

    def hour_of_day(self, t):
        return ((self.clock0 + t) % 1440) / 60.0

    def ambient(self, t):
        h = self.hour_of_day(t)
        return self.amb_base + self.amb_amp * math.sin(2 * math.pi * (h - 9 - self.amb_phase / 60) / 24)

    def _free(self, a, b):
        for s, e, _, _ in self.events:
            if a < e + 5 and s < b + 5:
                return False
        return True

    def _add(self, r, kind, n, dur, hours, extra=lambda: None, tries=60):
        end = SIM_HOURS * 60
        for _ in range(n):
            for _ in range(tries):
                s = r.uniform(0, end - 10)
                if not (hours[0] <= self.hour_of_day(s) < hours[1]):
                    continue
                d = dur()
                if self._free(s, s + d):
                    self.events.append((s, s + d, kind, extra()))
                    break

    def _plan(self, r):
        days = SIM_HOURS / 24
        # deliveries: door propped for a while, warm-ish stock added at the end
        self._add(r, "delivery", int(round(days * r.uniform(1, 2.5))),
                  lambda: r.choice([r.uniform(8, 25), r.uniform(20, 40), r.uniform(40, 80)]),
                  (5, 17), extra=lambda: (r.uniform(0.3, 1.5), r.uniform(-19, -15), r.uniform(0.7, 1.0)))
        # cleaning: door propped; sometimes the unit is isolated
        if r.random() < 0.75:
            self._add(r, "cleaning", 1, lambda: r.uniform(15, 45), (19, 24),
                      extra=lambda: r.random() < 0.35)
        # a door left ajar (not latched) until someone notices
        if r.random() < 0.6:
            self._add(r, "ajar", r.choice([1, 1, 2]), lambda: r.uniform(12, 120), (0, 24),
                      extra=lambda: r.choice([1.0, r.uniform(0.25, 0.6)]))
        # picks: short openings through working hours
        self._add(r, "pick", int(days * r.uniform(25, 70)), lambda: r.uniform(0.15, 1.5), (6, 21),
                  tries=8)
        self.events.sort()

    def defrost_phase(self, t):
        if not self.defrost_enabled:
            return None
        clock = self.clock0 + t
        into = clock % self.defrost_every
        if into < self.defrost_len:
            return "heat"
        if into < self.defrost_len + 4:
            return "drip"
        return None


def simulate(unit, rng):
    """Run one unit; yield a snapshot at every gateway report."""
    u = unit
    T = SET_POINT + rng.uniform(-1, 1)
    Tp = SET_POINT + rng.uniform(-0.8, 0.5)
    ice = rng.uniform(0.0, 0.15)
    running = False
    off_timer = 10.0
    calling = False
    call_unmet = 0.0
    tripped_until = -1.0
    seize_locked = False
    post_defrost = False
    end = SIM_HOURS * 60
    next_report = rng.uniform(2, 6)
    last_report = 0.0
    last_door_event = None     # (kind, end)
    ajar_open_since = None
    t = 0.0
    events = u.events
    while t < end:
        # ---- which event holds the door now
        door = 0.0
        kind, extra = None, None
        for s, e, k, x in events:
            if s <= t < e:
                kind, extra = k, x
                break
        if kind == "delivery":
            door = extra[2]
        elif kind == "cleaning":
            door = 0.9
        elif kind == "ajar":
            door = extra
        elif kind == "pick":
            door = 1.0
        if kind == "ajar":
            if ajar_open_since is None:
                ajar_open_since = t
        else:
            ajar_open_since = None
        if kind is not None:
            last_door_event = (kind, t)
        Ta = u.ambient(t)
        phase = u.defrost_phase(t)
        unit_off = kind == "cleaning" and extra

        # ---- compressor health
        dead = u.dead_at is not None and t >= u.dead_at
        s_level = 0.0
        if u.seize_at is not None and t >= u.seize_at:
            s_level = min(1.0, (t - u.seize_at) / u.seize_ramp)
            if s_level >= 1.0:
                seize_locked = True

        # ---- thermostat
        if T > u.cut_in:
            calling = True
        elif T < u.cut_out:
            calling = False
        want = calling and phase is None and not unit_off
        can = not dead and not seize_locked and t >= tripped_until
        if want and not running and off_timer >= 3.0 and can:
            running = True
        elif running and (not want or not can):
            running = False
            off_timer = 0.0
        if running and s_level > 0 and rng.random() < 0.03 * s_level ** 2 * DT:
            running = False
            off_timer = 0.0
            tripped_until = t + rng.uniform(6, 15)
        if not running:
            off_timer += DT
        if want and not running and (dead or seize_locked or t < tripped_until):
            call_unmet += DT
        elif running or not want:
            call_unmet = 0.0

        # ---- heat balance (air node has unit capacity)
        q_leak = u.UA * (Ta - T)
        q_door = u.UAd * door * (Ta - T)
        q_couple = u.k * (T - Tp)
        q_cool = 0.0
        if running:
            q_cool = (u.Q0 * (1 - 0.010 * (Ta - 20)) * u.cond *
                      (1 - 0.65 * ice ** 1.5) * (1 - 0.6 * s_level))
            q_cool *= min(1.0, max(0.0, (T + 45) / 25))   # less lift when very cold
        q_heat = u.defrost_heat * (1 - 0.6 * ice) if phase == "heat" else 0.0
        T += (q_leak + q_door + q_heat - q_cool - q_couple) * DT
        Tp += q_couple / u.Cp * DT

        # ---- ice on the evaporator
        ice += (0.0002 + 0.004 * door * u.humid + 0.0008 * u.gasket * u.humid) * DT
        if phase == "heat":
            ice -= 0.035 * DT
        ice = min(0.97, max(0.0, ice))
        if phase is not None:
            post_defrost = True
        elif running and T < u.cut_in:
            post_defrost = False

        # ---- a delivery ending adds its stock to the product
        for s, e, k, x in events:
            if k == "delivery" and e - DT <= t < e:
                m, tin, _ = x
                Tp = (u.Cp * Tp + m * tin) / (u.Cp + m)
                u.Cp += m

        t += DT

        if t >= next_report:
            current = 0.0
            if running:
                current = u.I0 * (1 + 0.012 * (Ta - 20) + 0.015 * max(0.0, T - SET_POINT)
                                  + 0.45 * ice ** 1.2)
                if s_level > 0:
                    current += u.I0 * 4.0 * s_level ** 1.3 * (1 + 0.25 * rng.gauss(0, 1))
                current += rng.gauss(0, 0.08)
            elif seize_locked and want and rng.random() < 0.05:
                current = u.I0 * rng.uniform(4.5, 6.5)       # caught a locked-rotor attempt
            else:
                current = abs(rng.gauss(0, 0.04))
            rt = next_report           # the report's exact time (state is at most DT old)
            # the door contact counts seconds open since the last report
            door_s = 0.0
            for s, e, k, x in events:
                if e > last_report and s < rt:
                    door_s += (min(e, rt) - max(s, last_report)) * 60.0
            reading = T + u.bias + rng.gauss(0, u.noise)
            sf = None
            if u.sensor_fault and t >= u.sensor_fault[0]:
                sf = u.sensor_fault[1]
                if sf == "open":
                    reading = 60.0 if rng.random() < 0.7 else rng.uniform(45, 60)
                elif sf == "short":
                    reading = -60.0 if rng.random() < 0.7 else rng.uniform(-60, -48)
                else:   # erratic: spikes either way
                    reading = T + rng.choice([-1, 1]) * rng.uniform(9, 35)
            yield {
                "unit": u.uid, "t": t, "T": T, "Tp": Tp, "Ta": Ta, "ice": ice,
                "running": running, "dead": dead, "seize": s_level, "locked": seize_locked,
                "tripped": t < tripped_until, "call_unmet": call_unmet, "phase": phase,
                "kind": kind, "extra": extra, "last_door_event": last_door_event,
                "ajar_min": (t - ajar_open_since) if ajar_open_since is not None else 0.0,
                "unit_off": bool(unit_off), "post_defrost": post_defrost,
                "sensor_fault": sf, "cut_in": u.cut_in, "cond": u.cond,
                "reading": max(-60.0, min(60.0, reading)),
                "door_s": door_s, "current": max(0.0, min(100.0, current)),
                "interval_s": (rt - last_report) * 60.0,
            }
            last_report = rt
            gap = rng.random() < 0.03
            next_report = rt + (rng.uniform(10, 30) if gap else rng.uniform(275, 325) / 60.0)


def label(s):
    """The action an operator who knew the simulated truth would want.

    Returns (label, situation) or None when the moment is not sampled (the
    truth is not visible yet or sits on a boundary)."""
    if s["sensor_fault"]:
        return "alert", "sensor_fault"
    if (s["dead"] or s["locked"]) and s["Tp"] > -8.0:
        return None            # hours after the failure, stock long lost: not sampled
    if s["dead"]:
        return ("shutdown", "compressor_dead") if s["call_unmet"] >= 10 else None
    if s["seize"] > 0:
        if s["seize"] < 0.3:
            return None
        if s["running"]:
            return "shutdown", "seizing"
        return ("shutdown", "tripped") if (s["tripped"] or s["locked"]) and s["call_unmet"] >= 3 else None
    recent = s["last_door_event"]
    recent_kind = recent[0] if recent and s["t"] - recent[1] < 90 else None
    if s["phase"] is not None:
        if s["ajar_min"] >= 1.5 or s["Tp"] > -18.4:
            return None
        return "none", "defrost_cycle"
    if s["ice"] >= 0.55:
        # past -15 C in the product the food itself is the problem: not sampled
        return ("defrost", "icing") if s["Tp"] <= -15.0 else None
    if s["ice"] >= 0.42:
        return None
    if s["ajar_min"] >= 4:
        return "alert", "door_ajar"
    if s["ajar_min"] > 1.0:
        return None
    if s["Tp"] > -18.0:
        if s["T"] <= -18.0:
            return None        # air already recovered, product still warm: ambiguous
        if s["kind"] == "delivery" or recent_kind == "delivery":
            return "alert", "delivery_overrun"
        if s["kind"] == "cleaning" or recent_kind == "cleaning":
            return "alert", "cleaning_overrun"
        if s["Ta"] > 26 or s["cond"] < 1.0:
            return "alert", "hot_overload"
        return "alert", "warm"
    if s["Tp"] > -18.5:
        return None
    if s["kind"] == "cleaning":
        return ("none", "cleaning_unit_off") if s["unit_off"] else ("none", "cleaning")
    if s["kind"] == "delivery":
        return "none", "delivery"
    if s["post_defrost"] and s["running"]:
        return "none", "recovery"
    if recent_kind in ("delivery", "cleaning", "ajar") and s["T"] > s["cut_in"] + 0.5 and s["running"]:
        return "none", "recovery"
    if s["kind"] == "pick" or (s["door_s"] > 0 and recent_kind == "pick"):
        return "none", "picks"
    if s["Ta"] > 28:
        return "none", "hot_ok"
    if s["door_s"] > 0:
        return None            # some other opening just ended: not a clean example
    return ("none", "normal_on") if s["running"] else ("none", "normal_off")


def pick(rng, pool, n):
    """Take n snapshots, spread across units and time."""
    by_unit = {}
    for s in pool:
        by_unit.setdefault(s["unit"], []).append(s)
    for lst in by_unit.values():
        rng.shuffle(lst)
    units = sorted(by_unit)
    rng.shuffle(units)
    out = []
    while len(out) < n and any(by_unit[u] for u in units):
        for u in units:
            lst = by_unit[u]
            while lst:
                s = lst.pop()
                if all(abs(s["t"] - o["t"]) > 12 or s["unit"] != o["unit"] for o in out):
                    out.append(s)
                    break
            if len(out) >= n:
                break
    return out


def note_for(rng, situation):
    p, pool = NOTES[situation]
    r = rng.random()
    if pool and r < p:
        return rng.choice(pool)
    if r < p + 0.12:
        return rng.choice(NOISE_NOTES)
    return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="eval/freezer_physics.jsonl")
    ap.add_argument("--stats", action="store_true", help="print candidate counts")
    args = ap.parse_args()
    rng = random.Random(SEED)
    names = [n for n, w in SCENARIOS for _ in range(w)]
    buckets = {}
    for i in range(N_UNITS):
        unit = Unit(i, names[i % len(names)], rng)
        for snap in simulate(unit, rng):
            lab = label(snap)
            if lab is not None:
                buckets.setdefault(lab, []).append(snap)
    if args.stats:
        for key in sorted(buckets):
            print(key, len(buckets[key]))
    chosen = []
    for lab, parts in TARGETS.items():
        short = 0
        for situation, n in parts:
            got = pick(rng, buckets.get((lab, situation), []), n)
            short += n - len(got)
            chosen += [(lab, situation, s) for s in got]
        if short:
            # fill from the label's other situations
            taken = {id(s) for _, _, s in chosen}
            rest = [s for sit, _ in parts for s in buckets.get((lab, sit), []) if id(s) not in taken]
            extra = pick(rng, rest, short)
            chosen += [(lab, label(s)[1], s) for s in extra]
    rng.shuffle(chosen)
    lines = []
    for i, (lab, situation, s) in enumerate(chosen, 1):
        data = {
            "temperature_c": round(s["reading"], 1),
            "door_open_s": int(round(min(86400.0, s["door_s"]))),
            "compressor_a": round(s["current"], 2),
            "note": note_for(rng, situation),
        }
        lines.append(json.dumps({"id": "fp-%04d" % i, "skill": "freezer_health",
                                 "data": data, "label": lab}))
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    if args.stats:
        counts = {}
        for lab, sit, _ in chosen:
            counts[(lab, sit)] = counts.get((lab, sit), 0) + 1
        for k in sorted(counts):
            print("chosen", k, counts[k])


if __name__ == "__main__":
    main()
