"""`edgeslim monitor` and the sampling it shares with `edgeslim.bench.Telemetry`: rates from recorded psutil
readings, per-core handling, absent sensors, process ranking, JSON lines, the summary, the plot, and the command."""

from __future__ import annotations

import io
import json
import sys
from collections import namedtuple
from types import SimpleNamespace

import psutil
import pytest

from edgeslim.bench import Telemetry
from edgeslim.monitor import (TELEMETRY_KEYS, Reading, Sampler, plot_samples, read, render_panel, run_during, sample,
                              summarize, watch)

# psutil's own result types, by the names and fields psutil 7 gives them (Linux).
scputimes = namedtuple("scputimes", "user nice system idle iowait irq softirq steal guest guest_nice")
scpufreq = namedtuple("scpufreq", "current min max")
svmem = namedtuple("svmem", "total available percent used free active inactive buffers cached shared slab")
snetio = namedtuple("snetio", "bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout")
pcputimes = namedtuple("pcputimes", "user system children_user children_system iowait")
pmem = namedtuple("pmem", "rss vms shared text lib data dirty")
shwtemp = namedtuple("shwtemp", "label current high critical")

# Three readings of a 2-core Linux VM (no temperature sensors), 0.5 s apart, recorded with psutil 7.2.2 while a
# loopback TCP pump ran in the recorder (pid 14440) and another process (pid 13407) kept core 1 busy at nice
# priority. `t` is time.monotonic(), `wall` time.time(); processes cut down to the busiest few plus pids 1 and 2.
FRAMES = [{'t': 18133.744190505,
  'wall': 1796011026.2617593,
  'cpu_times': [scputimes(user=9357.18, nice=532.85, system=915.99, idle=7198.21, iowait=4.91, irq=0.0, softirq=4.19, steal=8.41, guest=0.0, guest_nice=0.0),
                scputimes(user=10810.48, nice=457.28, system=1056.66, idle=5665.0, iowait=21.72, irq=0.0, softirq=6.65, steal=8.87, guest=0.0, guest_nice=0.0)],
  'cpu_freq': [scpufreq(current=2596.096, min=0.0, max=0.0), scpufreq(current=2596.096, min=0.0, max=0.0)],
  'temps': {},
  'vmem': svmem(total=25276510208, available=24267370496, percent=4.0, used=1009139712, free=19974291456, active=1602535424, inactive=2399748096, buffers=54620160, cached=4596211712, shared=9068544, slab=1095274496),
  'net': snetio(bytes_sent=21716995, bytes_recv=3751295045, packets_sent=152661, packets_recv=209341, errin=0, errout=0, dropin=0, dropout=0),
  'procs': [{'pid': 1,
             'create_time': 1795992892.24,
             'cpu_times': pcputimes(user=7.29, system=48.24, children_user=20233.77, children_system=1515.45, iowait=0.0),
             'memory_info': pmem(rss=15831040, vms=46759936, shared=6619136, text=5435392, lib=0, data=39215104, dirty=0),
             'name': 'process_api'},
            {'pid': 2,
             'create_time': 1795992892.24,
             'cpu_times': pcputimes(user=0.0, system=0.0, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=0, vms=0, shared=0, text=0, lib=0, data=0, dirty=0),
             'name': 'kthreadd'},
            {'pid': 10167,
             'create_time': 1796010795.98,
             'cpu_times': pcputimes(user=0.02, system=0.07, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=1060864, vms=1421312, shared=958464, text=864256, lib=0, data=237568, dirty=0),
             'name': 'memfd:sealed-91'},
            {'pid': 13407,
             'create_time': 1796010907.26,
             'cpu_times': pcputimes(user=109.73, system=0.36, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=475435008, vms=845541376, shared=109400064, text=4096, lib=0, data=413851648, dirty=0),
             'name': 'python'},
            {'pid': 14440,
             'create_time': 1796011025.71,
             'cpu_times': pcputimes(user=0.01, system=0.01, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=13860864, vms=93515776, shared=7008256, text=4096, lib=0, data=16760832, dirty=0),
             'name': 'python'}]},
 {'t': 18134.2509565,
  'wall': 1796011026.768526,
  'cpu_times': [scputimes(user=9357.19, nice=532.85, system=916.0, idle=7198.69, iowait=4.91, irq=0.0, softirq=4.19, steal=8.41, guest=0.0, guest_nice=0.0),
                scputimes(user=10810.48, nice=457.78, system=1056.66, idle=5665.0, iowait=21.72, irq=0.0, softirq=6.65, steal=8.87, guest=0.0, guest_nice=0.0)],
  'cpu_freq': [scpufreq(current=2596.096, min=0.0, max=0.0), scpufreq(current=2596.096, min=0.0, max=0.0)],
  'temps': {},
  'vmem': svmem(total=25276510208, available=24275447808, percent=4.0, used=1001062400, free=19982348288, active=1602539520, inactive=2399846400, buffers=54620160, cached=4596232192, shared=9068544, slab=1095270400),
  'net': snetio(bytes_sent=28023531, bytes_recv=3757601581, packets_sent=152951, packets_recv=209631, errin=0, errout=0, dropin=0, dropout=0),
  'procs': [{'pid': 1,
             'create_time': 1795992892.24,
             'cpu_times': pcputimes(user=7.29, system=48.24, children_user=20233.77, children_system=1515.45, iowait=0.0),
             'memory_info': pmem(rss=15831040, vms=46759936, shared=6619136, text=5435392, lib=0, data=39215104, dirty=0),
             'name': 'process_api'},
            {'pid': 2,
             'create_time': 1795992892.24,
             'cpu_times': pcputimes(user=0.0, system=0.0, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=0, vms=0, shared=0, text=0, lib=0, data=0, dirty=0),
             'name': 'kthreadd'},
            {'pid': 10167,
             'create_time': 1796010795.98,
             'cpu_times': pcputimes(user=0.02, system=0.07, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=1060864, vms=1421312, shared=958464, text=864256, lib=0, data=237568, dirty=0),
             'name': 'memfd:sealed-91'},
            {'pid': 13407,
             'create_time': 1796010907.26,
             'cpu_times': pcputimes(user=110.23, system=0.36, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=475435008, vms=845541376, shared=109400064, text=4096, lib=0, data=413851648, dirty=0),
             'name': 'python'},
            {'pid': 14440,
             'create_time': 1796011025.71,
             'cpu_times': pcputimes(user=0.02, system=0.02, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=13922304, vms=93515776, shared=7008256, text=4096, lib=0, data=16760832, dirty=0),
             'name': 'python'}]},
 {'t': 18134.755117173,
  'wall': 1796011027.2726872,
  'cpu_times': [scputimes(user=9357.19, nice=532.85, system=916.02, idle=7199.16, iowait=4.91, irq=0.0, softirq=4.2, steal=8.41, guest=0.0, guest_nice=0.0),
                scputimes(user=10810.48, nice=458.28, system=1056.66, idle=5665.0, iowait=21.72, irq=0.0, softirq=6.65, steal=8.87, guest=0.0, guest_nice=0.0)],
  'cpu_freq': [scpufreq(current=2596.096, min=0.0, max=0.0), scpufreq(current=2596.096, min=0.0, max=0.0)],
  'temps': {},
  'vmem': svmem(total=25276510208, available=24274501632, percent=4.0, used=1002008576, free=19981402112, active=1602539520, inactive=2399981568, buffers=54620160, cached=4596232192, shared=9068544, slab=1095270400),
  'net': snetio(bytes_sent=34395707, bytes_recv=3763973757, packets_sent=153243, packets_recv=209923, errin=0, errout=0, dropin=0, dropout=0),
  'procs': [{'pid': 1,
             'create_time': 1795992892.24,
             'cpu_times': pcputimes(user=7.29, system=48.25, children_user=20233.77, children_system=1515.45, iowait=0.0),
             'memory_info': pmem(rss=15839232, vms=46759936, shared=6619136, text=5435392, lib=0, data=39215104, dirty=0),
             'name': 'process_api'},
            {'pid': 2,
             'create_time': 1795992892.24,
             'cpu_times': pcputimes(user=0.0, system=0.0, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=0, vms=0, shared=0, text=0, lib=0, data=0, dirty=0),
             'name': 'kthreadd'},
            {'pid': 10167,
             'create_time': 1796010795.98,
             'cpu_times': pcputimes(user=0.02, system=0.08, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=1060864, vms=1421312, shared=958464, text=864256, lib=0, data=237568, dirty=0),
             'name': 'memfd:sealed-91'},
            {'pid': 13407,
             'create_time': 1796010907.26,
             'cpu_times': pcputimes(user=110.73, system=0.36, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=475435008, vms=845541376, shared=109400064, text=4096, lib=0, data=413851648, dirty=0),
             'name': 'python'},
            {'pid': 14440,
             'create_time': 1796011025.71,
             'cpu_times': pcputimes(user=0.02, system=0.03, children_user=0.0, children_system=0.0, iowait=0.0),
             'memory_info': pmem(rss=13983744, vms=93515776, shared=7008256, text=4096, lib=0, data=16760832, dirty=0),
             'name': 'python'}]}]


class Recorded:
    """Answers psutil's calls from one recorded reading (the `ps` seam of `edgeslim.monitor.read`)."""

    def __init__(self, frame: dict) -> None:
        self.f = frame

    def cpu_times(self, percpu=False):
        assert percpu
        return self.f["cpu_times"]

    def cpu_freq(self, percpu=False):
        f = self.f["cpu_freq"]
        return f if percpu else (scpufreq(sum(x.current for x in f) / len(f), 0.0, 0.0) if f else None)

    def sensors_temperatures(self):
        return self.f["temps"]

    def virtual_memory(self):
        return self.f["vmem"]

    def net_io_counters(self):
        return self.f["net"]

    def process_iter(self, attrs):
        return [SimpleNamespace(info={k: d.get(k) for k in attrs}) for d in self.f["procs"]]


def reading(i: int, frames=FRAMES, processes: bool = True) -> Reading:
    f = frames[i]
    return read(Recorded(f), processes=processes, now=f["t"], wall=f["wall"])


def frame_with(i: int, **changes) -> dict:
    return {**FRAMES[i], **changes}


DT01 = 18134.2509565 - 18133.744190505  # seconds between the first two recorded readings


# ---- read: psutil -> Reading ------------------------------------------------------------------------------------

def test_read_turns_recorded_psutil_into_plain_data():
    r = reading(0)
    assert r.t == 18133.744190505 and r.wall == 1796011026.2617593
    # per core (busy, total) seconds, busy excluding idle and iowait: core 0's busy is user+nice+system+softirq+steal
    assert r.cpu[0] == pytest.approx((9357.18 + 532.85 + 915.99 + 4.19 + 8.41,
                                      9357.18 + 532.85 + 915.99 + 7198.21 + 4.91 + 4.19 + 8.41))
    assert len(r.cpu) == 2
    assert r.freq_mhz == (2596.096, 2596.096)
    assert r.temps_c == {}
    assert r.mem == (1009139712, 25276510208, 4.0)
    assert r.net == (3751295045, 21716995)
    assert r.procs[(13407, 1796010907.26)] == ("python", pytest.approx(109.73 + 0.36), 475435008)
    assert sorted(pid for pid, _ in r.procs) == [1, 2, 10167, 13407, 14440]
    assert reading(0, processes=False).procs is None


def test_guest_time_is_not_counted_twice():
    # Linux counts guest time inside user time already, as psutil's cpu_percent does
    t = scputimes(user=10.0, nice=0.0, system=0.0, idle=10.0, iowait=0.0, irq=0.0, softirq=0.0, steal=0.0,
                  guest=4.0, guest_nice=0.0)
    r = read(Recorded(frame_with(0, cpu_times=[t])), now=0.0, wall=0.0)
    assert r.cpu == ((10.0, 20.0),)


# ---- sample: two readings -> rates ------------------------------------------------------------------------------

def test_sample_rates_per_core_and_overall():
    s = sample(reading(1), reading(0))
    # core 0: user +0.01, system +0.01, idle +0.48 -> 4 %; core 1: nice +0.50 and nothing idle -> 100 %
    assert s["cpu_percent_per_core"] == [4.0, 100.0]
    assert s["cpu_percent"] == 52.0  # 0.52 busy of 1.00 s over both cores
    assert s["interval_s"] == round(DT01, 3) and s["t"] == round(DT01, 3)
    assert s["time"] == round(1796011026.768526, 3)
    assert s["freq_mhz"] == 2596.1 and s["freq_mhz_per_core"] == [2596.1, 2596.1]
    assert (s["mem_used_bytes"], s["mem_total_bytes"], s["mem_percent"]) == (1001062400, 25276510208, 4.0)
    # 6,306,536 bytes each way over the loopback in 0.5068 s
    assert s["net_rx_bytes_s"] == pytest.approx(12444670.8, abs=0.1)
    assert s["net_tx_bytes_s"] == pytest.approx(12444670.8, abs=0.1)
    s2 = sample(reading(2), reading(1), t0=FRAMES[0]["t"])
    # core 0: system +0.02, softirq +0.01, idle +0.47 -> 6 %
    assert s2["cpu_percent_per_core"] == [6.0, 100.0] and s2["cpu_percent"] == 53.0
    assert s2["t"] == round(18134.755117173 - 18133.744190505, 3)


def test_changed_core_count_and_no_elapsed_ticks():
    one_core = frame_with(1, cpu_times=FRAMES[1]["cpu_times"][:1])
    s = sample(read(Recorded(one_core), now=FRAMES[1]["t"], wall=0.0), reading(0))
    assert s["cpu_percent_per_core"] is None  # a core went offline: no per-core figure pairs up
    assert 0.0 <= s["cpu_percent"] <= 100.0
    same = sample(reading(0), reading(0))
    assert same["cpu_percent"] == 0.0 and same["cpu_percent_per_core"] == [0.0, 0.0]
    assert same["net_rx_bytes_s"] is None and same["top"][0]["cpu_percent"] == 0.0  # no time elapsed: no rate


def test_network_counter_reset_gives_no_rate():
    reset = frame_with(1, net=FRAMES[1]["net"]._replace(bytes_recv=1000, bytes_sent=2000))
    s = sample(read(Recorded(reset), now=FRAMES[1]["t"], wall=0.0), reading(0))
    assert s["net_rx_bytes_s"] is None and s["net_tx_bytes_s"] is None
    gone = frame_with(1, net=None)
    assert sample(read(Recorded(gone), now=FRAMES[1]["t"], wall=0.0), reading(0))["net_rx_bytes_s"] is None


# ---- temperature ------------------------------------------------------------------------------------------------

def test_absent_temperature_is_none_in_data_and_na_on_screen():
    s = sample(reading(1), reading(0))
    assert s["temp_c"] is None and s["temps_c"] == {}

    class NoSensors(Recorded):  # psutil on macOS and Windows has no sensors_temperatures
        sensors_temperatures = None

    class Failing(Recorded):
        def sensors_temperatures(self):
            raise OSError("no hwmon")

        def cpu_freq(self, percpu=False):
            raise FileNotFoundError("/sys/devices/system/cpu/cpufreq")

    del NoSensors.sensors_temperatures
    assert read(NoSensors(FRAMES[0]), now=0.0, wall=0.0).temps_c == {}
    r = read(Failing(FRAMES[1]), now=FRAMES[1]["t"], wall=0.0)
    assert r.temps_c == {} and r.freq_mhz is None
    s = sample(r, reading(0))
    assert s["freq_mhz"] is None and s["freq_mhz_per_core"] is None

    from rich.console import Console

    con = Console(record=True, width=100, file=io.StringIO())
    con.print(render_panel(s))
    text = con.export_text()
    line = {ln.split()[1]: ln for ln in text.splitlines() if len(ln.split()) > 2}
    assert "n/a" in line["temperature"] and "n/a" in line["frequency"]


def test_temperature_is_the_hottest_real_sensor():
    temps = {"coretemp": [shwtemp("Package id 0", 61.0, 100.0, 100.0), shwtemp("Core 0", 58.0, 100.0, 100.0),
                          shwtemp("Core 0", 66.5, 100.0, 100.0)],
             "acpitz": [shwtemp("", 0.0, None, None)],  # an unconnected sensor reads 0
             "nvme": [shwtemp("Composite", 41.85, 84.85, 84.85)]}
    r = read(Recorded(frame_with(1, temps=temps)), now=FRAMES[1]["t"], wall=0.0)
    assert r.temps_c == {"coretemp:Package id 0": 61.0, "coretemp:Core 0": 58.0, "coretemp:Core 0#2": 66.5,
                         "nvme:Composite": 41.85}
    s = sample(r, reading(0))
    assert s["temp_c"] == 66.5 and s["temps_c"]["nvme:Composite"] == 41.9


# ---- processes --------------------------------------------------------------------------------------------------

def test_top_processes_by_cpu_then_rss():
    s = sample(reading(1), reading(0), top=10)
    assert [p["pid"] for p in s["top"]] == [13407, 14440, 1, 10167, 2]  # idle ones by RSS
    busy = s["top"][0]
    assert busy == {"pid": 13407, "name": "python", "cpu_percent": round(100 * 0.5 / DT01, 1), "rss_bytes": 475435008}
    assert s["top"][1]["cpu_percent"] == round(100 * 0.02 / DT01, 1)
    assert [p["pid"] for p in sample(reading(1), reading(0), top=2)["top"]] == [13407, 14440]
    assert sample(reading(1), reading(0), top=0)["top"] == []
    assert sample(reading(1, processes=False), reading(0, processes=False))["top"] == []


def test_new_reused_and_unreadable_processes():
    procs = [dict(d) for d in FRAMES[1]["procs"]]
    # pid 10167 exited and its pid was reused by a process started within the interval (0.3 s of CPU so far)
    procs[2] = {**procs[2], "create_time": 1796011026.5, "name": "worker",
                "cpu_times": pcputimes(0.25, 0.05, 0.0, 0.0, 0.0)}
    procs[0] = {**procs[0], "cpu_times": None, "memory_info": None}  # access denied
    r = read(Recorded(frame_with(1, procs=procs)), processes=True, now=FRAMES[1]["t"], wall=0.0)
    top = sample(r, reading(0), top=10)["top"]
    assert [p["pid"] for p in top] == [13407, 10167, 14440, 2]
    assert top[1]["name"] == "worker" and top[1]["cpu_percent"] == round(100 * 0.3 / DT01, 1)


# ---- Sampler, summary, Telemetry --------------------------------------------------------------------------------

def _replay(frames, processes=True):
    it = iter(range(len(frames)))
    return lambda: reading(next(it), frames, processes)


def test_sampler_primes_then_samples_successive_intervals():
    s = Sampler(_replay(FRAMES), top=3, prime_s=0.0)
    first, second = s.sample(), s.sample()
    assert s.t0_ == FRAMES[0]["t"]
    assert first["cpu_percent"] == 52.0 and second["cpu_percent"] == 53.0
    assert first["t"] == round(DT01, 3) and second["t"] == round(FRAMES[2]["t"] - FRAMES[0]["t"], 3)
    assert second["interval_s"] == round(FRAMES[2]["t"] - FRAMES[1]["t"], 3)
    assert len(first["top"]) == 3 and first["top"][0]["pid"] == 13407


def test_watch_samples_up_to_and_including_the_last_second():
    more = FRAMES + [dict(FRAMES[2], t=FRAMES[2]["t"] + 0.5 * k) for k in (1, 2)]
    got = list(watch(0.001, 0.002, sampler=Sampler(_replay(more), prime_s=0.0)))
    assert [s["cpu_percent"] for s in got[:2]] == [52.0, 53.0] and len(got) == 3  # t = 0, 0.001, 0.002
    assert len(list(watch(0.5, 0.0, sampler=Sampler(_replay(more), prime_s=0.0)))) == 1


def test_sample_is_one_json_line_with_stable_keys():
    s = sample(reading(1), reading(0))
    line = json.dumps(s, separators=(",", ":"))
    assert "\n" not in line and json.loads(line) == s
    assert set(s) == {"t", "time", "interval_s", "cpu_percent", "cpu_percent_per_core", "freq_mhz",
                      "freq_mhz_per_core", "temp_c", "temps_c", "mem_used_bytes", "mem_total_bytes", "mem_percent",
                      "net_rx_bytes_s", "net_tx_bytes_s", "top"}


def test_summarize_skips_missing_figures():
    samples = [{"cpu_percent": 52.0, "freq_mhz": 2596.1, "temp_c": None},
               {"cpu_percent": 53.0, "freq_mhz": None, "temp_c": None},
               {"cpu_percent": 10.0, "freq_mhz": 2000.0}]
    assert summarize(samples) == {"samples": 3, "cpu_percent": {"mean": 38.3, "max": 53.0},
                                  "freq_mhz": {"mean": 2298.1, "max": 2596.1}, "temp_c": None}
    assert summarize([]) == {"samples": 0, "cpu_percent": None, "freq_mhz": None, "temp_c": None}
    assert summarize(samples, ["mem_percent"]) == {"samples": 3, "mem_percent": None}


def test_telemetry_samples_recorded_readings_through_the_monitor():
    tel = Telemetry(interval=0.01)
    reads = _replay(FRAMES, processes=False)

    def reader():
        r = reads()
        if r.t == FRAMES[-1]["t"]:
            tel._stop.set()  # the last recorded reading: end the loop after this sample
        return r

    tel.reader = reader
    with tel:
        tel._t.join(10.0)
    assert [s["cpu_percent"] for s in tel.samples] == [52.0, 53.0]
    assert all(s["top"] == [] for s in tel.samples)  # no process scan while benchmarks run
    assert tel.summary() == {"samples": 2, "cpu_percent": {"mean": 52.5, "max": 53.0},
                             "freq_mhz": {"mean": 2596.1, "max": 2596.1}, "temp_c": None}
    assert tuple(k for k in tel.summary() if k != "samples") == TELEMETRY_KEYS


def test_telemetry_on_this_machine_keeps_its_summary_keys():
    import time

    with Telemetry(interval=0.05) as tel:
        time.sleep(0.4)
    summ = tel.summary()
    assert set(summ) == {"samples", "cpu_percent", "freq_mhz", "temp_c"} and summ["samples"] >= 2
    assert 0.0 <= summ["cpu_percent"]["mean"] <= summ["cpu_percent"]["max"] <= 100.0


# ---- plot and panel ---------------------------------------------------------------------------------------------

def test_plot_and_panel_render_recorded_samples(tmp_path):
    s = Sampler(_replay(FRAMES), prime_s=0.0)
    samples = [s.sample(), s.sample()]
    png = plot_samples(samples, "python infer.py")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    hot = [dict(x, temp_c=60.0 + i) for i, x in enumerate(samples)]
    assert plot_samples(hot) != plot_samples(samples)  # the temperature panel draws a line instead of "n/a"

    from rich.console import Console

    con = Console(record=True, width=100, file=io.StringIO())
    con.print(render_panel(samples[0]))
    text = con.export_text()
    assert "2596 MHz" in text and "954.7 MiB / 23.5 GiB (4.0 %)" in text and "11.9 MiB/s" in text
    rows = [ln.split() for ln in text.splitlines()]
    assert ["│", "13407", "python", "98.7", "453.4", "MiB", "│"] in rows
    assert any(r[:2] == ["│", "1"] and r[-3] == "100.0" for r in rows if len(r) > 4)  # core 1


# ---- the command ------------------------------------------------------------------------------------------------

def _main(args, capsys):
    from edgeslim.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_json_lines(capsys):
    code, out, err = _main(["monitor", "--json", "--seconds", "2", "--interval", "0.5", "--top", "3"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5  # t = 0, 0.5, 1, 1.5, 2
    rows = [json.loads(ln) for ln in lines]
    assert all(b["t"] > a["t"] for a, b in zip(rows, rows[1:]))
    ncores = psutil.cpu_count()
    for r in rows:
        assert len(r["cpu_percent_per_core"]) == ncores and 0.0 <= r["cpu_percent"] <= 100.0
        assert 0 < r["mem_used_bytes"] < r["mem_total_bytes"]
        assert len(r["top"]) == 3
        assert [p["cpu_percent"] for p in r["top"]] == sorted((p["cpu_percent"] for p in r["top"]), reverse=True)


def test_cli_during_writes_plot_and_samples_and_passes_the_exit_code(tmp_path, capsys):
    out = tmp_path / "run.png"
    code, _, err = _main(["monitor", "--during", f"{sys.executable} -c 'import time, sys; time.sleep(0.5); sys.exit(3)'",
                          "--interval", "0.2", "--out", str(out)], capsys)
    assert code == 3, err
    assert out.read_bytes().startswith(b"\x89PNG")
    d = json.loads((tmp_path / "run.json").read_text())
    assert d["returncode"] == 3 and d["command"][0] == sys.executable and len(d["samples"]) >= 2
    assert d["summary"]["samples"] == len(d["samples"]) and set(TELEMETRY_KEYS) <= set(d["summary"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.png"]

    # the existing outputs are kept, and the command does not run
    marker = tmp_path / "ran"
    code, _, err = _main(["monitor", "--during", f"{sys.executable} -c 'open({str(marker)!r}, \"w\")'",
                          "--out", str(out)], capsys)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1 and not marker.exists()


def test_cli_during_missing_executable_is_one_line(tmp_path, capsys):
    code, _, err = _main(["monitor", "--during", "no-such-program-xyz --flag", "--out", str(tmp_path / "m.png")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no-such-program-xyz" in err
    assert list(tmp_path.iterdir()) == []
    code, _, err = _main(["monitor", "--during", "x", "--out", str(tmp_path / "m.txt")], capsys)
    assert code == 2 and ".png" in err


def test_command_killed_by_a_signal_exits_128_plus_n():
    rc, samples = run_during([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                             interval=5.0, sampler=Sampler(top=0))
    assert rc == 128 + 9 and len(samples) == 1  # the sample taken when it ended
