"""Environments of a group: K members x N gymnasium envs, CleanRL's wrappers, gymnasium's SAME_STEP autoreset.

SAME_STEP on purpose (DESIGN.md section 5): the step that ends an episode also resets that
sub-env, returns the new episode's first observation, and puts the old episode's last observation
in ``info["final_obs"]``. Every transition is then a real one (no NEXT_STEP "reset step" to mask),
and a truncated episode can be bootstrapped from the value of its final observation.

Wrappers act per sub-env (as in CleanRL, where they sit inside each sub-env), so ``final_obs`` is normalised like
every other observation, and the episode statistics see raw rewards. The reference this module is held to, bitwise
per member, is gymnasium's own stack: SyncVectorEnv(SAME_STEP) over ``gym.make`` + CleanRL's wrappers per sub-env
(tests/test_group_envs.py builds it).
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
import weakref
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

# Per-layer state a sub-env carries between steps (wrappers' counters and accumulators, classic-control
# physics). With the running mean/std objects, the RNG and MuJoCo's integration state this is everything a
# run needs to continue bitwise from a checkpoint. Captured only from an object's own __dict__.
_STATE_ATTRS = ("_elapsed_steps", "_has_reset", "episode_returns", "episode_lengths", "episode_count",
                "discounted_reward", "state", "steps_beyond_terminated")
_RMS_ATTRS = ("obs_rms", "return_rms")


def _safe(value, tensor: bool = True):
    """numpy -> tensors and plain numbers, so torch.load(weights_only=True) can read it back. ``tensor=False``
    (env worker processes, which never import torch) keeps a numpy copy under "ndarray"; ``_tensorise`` turns it
    into the tensor in the training process."""
    if isinstance(value, np.ndarray):
        if not tensor:
            return {"ndarray": np.array(value, copy=True)}
        import torch

        return {"ndarray": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, np.generic):
        return {"npscalar": value.item(), "dtype": value.dtype.str}
    return value


def _unsafe(value):
    if isinstance(value, dict) and "ndarray" in value:
        v = value["ndarray"]
        return np.array(v, copy=True) if isinstance(v, np.ndarray) else v.numpy().copy()
    if isinstance(value, dict) and "npscalar" in value:
        return np.dtype(value["dtype"]).type(value["npscalar"])
    return value


def _tensorise(obj):
    """A worker's sub-env state (numpy arrays) as ``sub_env_state`` gives it in-process (tensors)."""
    if isinstance(obj, np.ndarray):
        import torch

        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: _tensorise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tensorise(v) for v in obj]
    return obj


def _numpyise(obj):
    """The other way, before a state goes to a worker: tensors -> numpy arrays (no torch needed there)."""
    if isinstance(obj, dict):
        return {k: _numpyise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numpyise(v) for v in obj)
    if type(obj).__module__ == "torch" and hasattr(obj, "numpy"):
        return obj.numpy()
    return obj


def _layers(env: gym.Env):
    while True:
        yield env
        if not isinstance(env, gym.Wrapper):
            return
        env = env.env


def sub_env_state(env: gym.Env, tensor: bool = True) -> list[dict]:
    states = []
    for layer in _layers(env):
        own = vars(layer)
        state = {k: _safe(own[k], tensor) for k in _STATE_ATTRS if k in own}
        for k in _RMS_ATTRS:
            if k in own:
                rms = own[k]
                state[k] = {f: _safe(getattr(rms, f), tensor) for f in ("mean", "var", "count")}
        states.append(state)
    base = env.unwrapped
    states[-1]["np_random"] = base.np_random.bit_generator.state
    if hasattr(base, "model") and hasattr(base, "data"):  # MuJoCo: positions, velocities, warm-start, time...
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        full = np.empty(mujoco.mj_stateSize(base.model, spec))
        mujoco.mj_getState(base.model, base.data, full, spec)
        states[-1]["mujoco"] = _safe(full, tensor)
    return states


def load_sub_env_state(env: gym.Env, states: list[dict]) -> None:
    layers = list(_layers(env))
    if len(layers) != len(states):
        raise ValueError(f"checkpoint has {len(states)} env layers, this env has {len(layers)}: different wrappers")
    for layer, state in zip(layers, states):
        for k in _STATE_ATTRS:
            if k in state:
                setattr(layer, k, _unsafe(state[k]))
        for k in _RMS_ATTRS:
            if k in state:
                rms = getattr(layer, k)
                rms.mean, rms.var, rms.count = (_unsafe(state[k][f]) for f in ("mean", "var", "count"))
    base = env.unwrapped
    base.np_random.bit_generator.state = states[-1]["np_random"]
    if "mujoco" in states[-1]:
        import mujoco

        # no mj_forward here: it would rewrite the solver warm-start that the next mj_step reads
        mujoco.mj_setState(base.model, base.data, _unsafe(states[-1]["mujoco"]), mujoco.mjtState.mjSTATE_INTEGRATION)


# ================================================================================================ groups
# One process trains K runs ("members") at once. GroupEnvs steps K members x N sub-envs each with CleanRL's
# wrappers vectorised over all E = K * N sub-envs: the raw gymnasium envs (``gym.make``: TimeLimit around the v5
# physics, the reference) are stepped in a Python loop, and everything CleanRL's wrapper stack does on
# top (episode statistics, action clip, observation and reward normalisation and clip) is a handful of numpy ops
# per step over [E, ...] arrays. Per member it is bitwise gymnasium's wrapper stack: every sub-env keeps its OWN running
# statistics and accumulators (one row each), all ops are elementwise (IEEE add/mul/div/sqrt/clip give the same
# bits whatever the array size), so a member never sees another member's numbers.


@dataclass
class GroupStep:
    obs: np.ndarray  # [K, N, obs_dim] float64, next observations (normalised + clipped when configured)
    reward: np.ndarray  # [K, N] float64, as wrapped (normalised + clipped when configured)
    terminated: np.ndarray  # [K, N] bool
    truncated: np.ndarray  # [K, N] bool
    final_obs: np.ndarray  # [K, N, obs_dim] float64: where terminated | truncated, the ended episode's last obs
    #                        (normalised like obs); elsewhere equal to obs
    episodes: list[tuple[int, int, float, int]]  # (member, env index in member, raw return, length), ended this step


_SETTOTALMASS = "compiler attribute 'settotalmass' is deprecated"


class _quiet_settotalmass:
    """Drop MuJoCo's 'settotalmass is deprecated' compiler warning (HalfCheetah's and Hopper's XML set it) while
    envs are built; every other MuJoCo warning goes where it went before (MuJoCo's default prints it to stderr)."""

    def __enter__(self):
        try:
            import mujoco
        except ImportError:
            self._mujoco = None
            return self
        self._mujoco, self._previous = mujoco, mujoco.get_mju_user_warning()

        def forward(msg: str) -> None:
            if msg.startswith(_SETTOTALMASS):
                return
            if self._previous is not None:
                self._previous(msg)
            else:
                import sys

                print(f"WARNING: {msg}\n", file=sys.stderr)

        mujoco.set_mju_user_warning(forward)
        return self

    def __exit__(self, *exc):
        if self._mujoco is not None:
            self._mujoco.set_mju_user_warning(self._previous)


# np.clip(a, lo, hi) with float bounds is this ufunc (numpy/_core/_methods.py::_clip) behind ~2 us of Python
_clip = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", None) or np.clip


def _as(count: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A float64 count as gymnasium's Python-float count acts on ``like`` (NEP 50: a Python float takes the array's
    dtype). A no-op for float64 arrays; matters for float32 observations and the float32 initial statistics."""
    return count.astype(like.dtype, copy=False)


def _rms_update(mean: np.ndarray, var: np.ndarray, count: np.ndarray, x: np.ndarray):
    """gymnasium's RunningMeanStd.update(np.array([x_e])) for every row e at once: a batch of ONE sample per
    sub-env, in gymnasium's float operation order (update_mean_var_count_from_moments):

        delta = batch_mean - mean;  tot_count = count + batch_count
        new_mean = mean + delta * batch_count / tot_count
        M2 = var * count + batch_var * batch_count + np.square(delta) * count * batch_count / tot_count
        new_var = M2 / tot_count

    with batch_count = 1, batch_mean = x (np.mean of one sample) and batch_var = (x - x)**2 (np.var of one sample:
    0, or nan where x is not finite). ``count`` is [E] float64 (a Python float per wrapper in gymnasium).
    Returns new (mean, var, count)."""
    c = count.reshape(count.shape + (1,) * (x.ndim - 1))
    tot = c + 1.0
    if mean.dtype == var.dtype == x.dtype == np.float64:  # the MuJoCo case after the first update: no casts
        batch_var = x - x
        batch_var *= batch_var
        delta = x - mean
        new_mean = delta / tot
        new_mean += mean  # mean + delta / tot (IEEE addition commutes)
        m2 = var * c
        m2 += batch_var
        sq = delta * delta  # np.square
        sq *= c
        sq /= tot
        m2 += sq
        m2 /= tot
        return new_mean, m2, tot.reshape(count.shape)
    # any dtypes, with numpy's promotion: the float32 initial statistics (first update), float32 observations
    d0 = x - x
    batch_var = d0 * d0
    delta = x - mean
    new_mean = mean + delta / _as(tot, delta)
    m_a = var * _as(c, var)
    m2 = m_a + batch_var + np.square(delta) * _as(c, delta) / _as(tot, delta)
    new_var = m2 / _as(tot, m2)
    return new_mean, new_var, tot.reshape(count.shape)


# ================================================================================================ env workers
# GroupEnvs(workers=W >= 1): the E raw envs (``gym.make``) live in W worker processes, worker w holding the
# contiguous slice [bounds[w], bounds[w+1]) of sub-envs; every wrapper stays in the training process, unchanged.
# Workers are started with "spawn" (or "forkserver"), never plain fork: the training process may hold CUDA and torch
# threads. They import numpy, gymnasium and the env's own modules (mujoco), never torch.
#
# Protocol, one round-trip per step. Shared memory holds the actions (raw bytes, viewed with each step's dtype,
# whose code sits in "dtype": the env computes with the dtype it is given, e.g. HalfCheetah's control cost), the raw
# results (obs, reward, terminated, truncated and, for the sub-envs whose episode ended, the observation of the
# reset the worker did at once: SAME_STEP) and per worker a command byte and a status byte. The training process
# writes the actions, sets the commands to STEP and posts each worker's semaphore ``go``; a worker steps its slice and
# posts its ``done``. Any other command (reset with seeds, get/set sub-env state, close) is a pickled message through
# the worker's pipe (command MESSAGE), answered through the pipe before ``done``; so is the traceback of a step that
# raised (status ERROR). Semaphores because they are cheap: a blocking semaphore round-trip between two processes
# costs ~5 us on the dev VM, a pipe's 50-70 us. Both sides may spin before sleeping (``spin_us``, ``worker_spin_us``).

_STEP, _MESSAGE = 0, 1
_OK, _ERROR = 0, 1
_ACTION_ITEMSIZE = 16  # bytes reserved per action element in shared memory: any numeric numpy dtype fits
_START_METHODS = ("spawn", "forkserver")
# False: one "done" semaphore per worker (the training process may wake up W times per step). True: the workers
# count themselves done under a lock and the last one posts the group's semaphore (one wake-up). Measured on the
# 16-core H100 box, K=60 HalfCheetah (experiments/env_workers/ab_wakeup.py, README there): no better at W=4 and 8,
# worse at W=15 (93k vs 101k env steps/s; the workers then contend for the lock), so off.
_ONE_WAKEUP = False
_START_TIMEOUT = 300.0  # s: a worker's start (a fresh interpreter importing gymnasium and building its envs)


class EnvWorkerError(RuntimeError):
    """An env worker process of a GroupEnvs died, gave no reply within the timeout, or raised (its traceback is in
    the message). The group is unusable afterwards (its workers are shut down); close() is still safe."""


def _shared_layout(E: int, W: int, obs_shape: tuple, raw_dtype, action_elems: int) -> tuple[dict, int]:
    """name -> (byte offset, shape, dtype) of the arrays in the shared buffer (64-byte aligned), total bytes."""
    arrays = {"actions": ((E * action_elems * _ACTION_ITEMSIZE,), np.uint8), "dtype": ((16,), np.uint8),
              "cmd": ((W,), np.uint8), "status": ((W,), np.uint8), "seq": ((W,), np.int64), "acked": ((W,), np.int64),
              "count": ((1,), np.int64), "target": ((1,), np.int64),
              "obs": ((E, *obs_shape), raw_dtype), "reset_obs": ((E, *obs_shape), raw_dtype),
              "reward": ((E,), np.float64), "terminated": ((E,), np.bool_), "truncated": ((E,), np.bool_)}
    layout, off = {}, 0
    for name, (shape, dtype) in arrays.items():
        dtype = np.dtype(dtype)
        layout[name] = (off, shape, dtype.str)
        off += -(-int(np.prod(shape, dtype=np.int64)) * dtype.itemsize // 64) * 64
    return layout, max(off, 64)


def _shared_views(raw, layout: dict) -> dict[str, np.ndarray]:
    mem = np.frombuffer(raw, dtype=np.uint8)
    return {name: np.ndarray(shape, np.dtype(dtype), buffer=mem, offset=off)
            for name, (off, shape, dtype) in layout.items()}


def _action_view(views: dict, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """The shared action bytes as an [E, *action_shape] array of ``dtype``."""
    return np.ndarray(shape, dtype, buffer=views["actions"], offset=0)


def _acquire(sem, spin_s: float) -> bool:
    """sem.acquire without blocking, then spinning up to spin_s seconds; False if still not acquired."""
    if sem.acquire(False):
        return True
    if spin_s > 0.0:
        from time import perf_counter

        end = perf_counter() + spin_s
        while perf_counter() < end:
            if sem.acquire(False):
                return True
    return False


def _env_worker(w: int, conn, go, done, lo: int, hi: int, make_args: bytes, raw, layout: dict, action_shape: tuple,
                spin_s: float, lock) -> None:
    """Worker w: builds sub-envs [lo, hi) and serves the training process until "close", a closed pipe or the
    death of its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle (it stops the workers)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while it started us
    parent = os.getppid()
    envs: list[gym.Env] = []

    def wait_go() -> bool:
        if _acquire(go, spin_s):
            return True
        while not go.acquire(True, 1.0):
            if os.getppid() != parent:  # orphaned: the training process (or its forkserver) is gone
                return False
        return True

    try:
        try:
            spec, max_episode_steps, kwargs = pickle.loads(make_args)
            with _quiet_settotalmass():
                for _ in range(hi - lo):
                    envs.append(gym.make(spec, max_episode_steps=max_episode_steps, disable_env_checker=True, **kwargs))
            views = _shared_views(raw, layout)
            obs, reset_obs, reward = views["obs"][lo:hi], views["reset_obs"][lo:hi], views["reward"][lo:hi]
            terminated, truncated = views["terminated"][lo:hi], views["truncated"][lo:hi]
            cmd, status, code_field = views["cmd"][w:w + 1], views["status"][w:w + 1], views["dtype"]
            seq, acked = views["seq"][w:w + 1], views["acked"][w:w + 1]
            count, target = views["count"], views["target"]
            full_shape = (layout["obs"][1][0], *action_shape)
            actions_as: dict[bytes, np.ndarray] = {}
            steps, resets = [e.step for e in envs], [e.reset for e in envs]
            reply = pickle.dumps((0, "ok", len(list(_layers(envs[0])))))
        except BaseException:  # noqa: BLE001 - whatever it is, the training process gets its traceback
            reply = pickle.dumps((0, "error", traceback.format_exc()))
            envs = []
        def finish(s: int) -> None:
            """Command s done. With ``lock``, ``done`` is the group's: only the last worker to finish posts it."""
            if lock is None:
                acked[0] = s
                done.release()
                return
            with lock:
                acked[0] = s
                n = int(count[0]) + 1
                count[0] = n
            if n == target[0]:
                done.release()

        finish(0)  # counted before the reply is read: the training process's next command starts a new count
        conn.send_bytes(reply)
        if not envs:
            return
        from time import perf_counter

        busy, nsteps = 0.0, 0  # time spent stepping (for worker_stats)
        while wait_go():
            s = int(seq[0])
            if cmd[0] == _STEP:
                t0 = perf_counter()
                try:
                    code = code_field.tobytes()
                    a = actions_as.get(code)
                    if a is None:
                        dtype = np.dtype(code.rstrip(b"\0").decode())
                        a = actions_as[code] = _action_view(views, dtype, full_shape)[lo:hi]
                    for j, step in enumerate(steps):
                        obs[j], reward[j], terminated[j], truncated[j], _ = step(a[j])
                        if terminated[j] or truncated[j]:
                            reset_obs[j], _ = resets[j]()
                    status[0] = _OK
                except BaseException:  # noqa: BLE001 - the training process raises it (EnvWorkerError)
                    conn.send_bytes(pickle.dumps((s, "error", traceback.format_exc())))
                    status[0] = _ERROR
                busy += perf_counter() - t0
                nsteps += 1
                finish(s)
                continue
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):  # the training process closed its end or died
                return
            try:
                command, arg = pickle.loads(message)
                result = None
                if command == "close":
                    return
                elif command == "reset":
                    for j, seed in enumerate(arg):
                        obs[j], _ = envs[j].reset(seed=seed)
                        envs[j].action_space.seed(seed)
                elif command == "stats":
                    result = {"steps": nsteps, "busy_s": busy}
                    busy, nsteps = 0.0, 0
                elif command == "get_state":
                    result = [(sub_env_state(envs[j], tensor=False),
                               envs[j].action_space.np_random.bit_generator.state) for j in arg]
                elif command == "set_state":
                    for j, states, rng in arg:
                        load_sub_env_state(envs[j], states)
                        envs[j].action_space.np_random.bit_generator.state = rng
                else:
                    raise ValueError(f"unknown env worker command {command!r}")
                reply = pickle.dumps((s, "ok", result))
            except BaseException:  # noqa: BLE001 - the training process raises it (EnvWorkerError)
                reply = pickle.dumps((s, "error", traceback.format_exc()))
            conn.send_bytes(reply)
            finish(s)
    except (BrokenPipeError, EOFError):
        return
    finally:
        for env in envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001, S110 - exiting anyway; a failing close must not hide why
                pass


class _bare_main:
    """While workers start: a bare ``__main__`` module, so that spawn does not re-run the training process's main
    script (or module) in each worker: esper-train's imports torch, hydra and wandb (measured: +160 MB of private
    memory and seconds of start per worker). The worker function and everything it unpickles live in importable
    modules; an env class defined in a ``__main__`` script cannot be built in a worker (its start fails, clearly)."""

    def __enter__(self):
        import sys
        import types

        self._main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        return self

    def __exit__(self, *exc):
        import sys

        if self._main is None:
            sys.modules.pop("__main__", None)
        else:
            sys.modules["__main__"] = self._main


def _shutdown(procs: list, conns: list, gos: list, cmd: np.ndarray, grace: float = 2.0) -> None:
    """Ask every worker to exit, wait up to ``grace`` seconds, then kill what is left. Idempotent."""
    import time

    for w, (c, go) in enumerate(zip(conns, gos)):
        try:
            c.send_bytes(pickle.dumps(("close", None)))
            cmd[w] = _MESSAGE
            go.release()
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5.0)
    for c in conns:
        c.close()
    procs.clear()
    conns.clear()
    gos.clear()


class _EnvWorkers:
    """The training process's side of W env workers: shared arrays, semaphores and pipes, liveness and timeouts."""

    def __init__(self, num_workers: int, env_id: str, make_args: bytes, E: int, num_envs: int, obs_shape: tuple,
                 raw_dtype, action_shape: tuple, timeout: float, start_method: str, spin_us: float,
                 worker_spin_us: float, part_rows: list[tuple[int, int]] | None = None):
        """``part_rows``: the sub-env ranges [lo, hi) stepped separately (GroupEnvs parts); every worker's slice lies
        in one part, the workers shared out in proportion to the parts' sizes (at least one each)."""
        import multiprocessing as mp

        W = num_workers
        self.env_id, self.E, self.num_envs, self.timeout = env_id, E, num_envs, float(timeout)
        part_rows = part_rows or [(0, E)]
        counts = [max(1, round(W * (hi - lo) / E)) for lo, hi in part_rows]
        while sum(counts) > W:  # the largest share gives one back
            counts[counts.index(max(counts))] -= 1
        while sum(counts) < W:
            counts[min(range(len(counts)), key=lambda i: counts[i] / (part_rows[i][1] - part_rows[i][0]))] += 1
        self.bounds, self.part_workers = [0], []
        for (lo, hi), n in zip(part_rows, counts):
            self.part_workers.append((len(self.bounds) - 1, len(self.bounds) - 1 + n))
            self.bounds += [lo + (j + 1) * (hi - lo) // n for j in range(n)]
        self.action_shape = action_shape
        self.spin_s, self.worker_spin_s = float(spin_us) * 1e-6, float(worker_spin_us) * 1e-6
        layout, nbytes = _shared_layout(E, W, obs_shape, raw_dtype, int(np.prod(action_shape, dtype=np.int64)))
        ctx = mp.get_context(start_method)
        self._raw = ctx.RawArray("B", nbytes)
        self.views = _shared_views(self._raw, layout)
        self.cmd, self.status, self._code_field = self.views["cmd"], self.views["status"], self.views["dtype"]
        # command numbers: the worker acknowledges the one it finished in "acked" (the semaphores only wake it and
        # us up), so a call interrupted anywhere (KeyboardInterrupt) leaves nothing to miscount
        self.seq, self.acked = self.views["seq"], self.views["acked"]
        self._last = 0
        self._posting = False  # handing out commands (still True after an interrupt there: the group is unusable)
        self._code = b""
        self._actions_as: dict[np.dtype, np.ndarray] = {}
        self.procs: list = []
        self.conns: list = []
        self.gos: list = []
        self.dones: list = []
        self.go_release: list = []
        self.sent = [0] * W  # per worker: number of the last command sent (0: its startup)
        self.sent_kind = [_MESSAGE] * W
        self.failed: str | None = None
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.conns, self.gos, self.cmd)
        # _ONE_WAKEUP: one wake-up of this process per step (see there)
        self.lock = ctx.Lock() if _ONE_WAKEUP else None
        self.all_done = ctx.Semaphore(0) if _ONE_WAKEUP else None
        self.count, self.target = self.views["count"], self.views["target"]
        self.count[0], self.target[0] = 0, W
        # SIGINT blocked while starting: a spawned worker inherits the mask through exec, so a Ctrl-C in the
        # terminal can never reach it before it ignores SIGINT; here it is delivered once unblocked
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with _bare_main():
                self._start(ctx, W, make_args, layout, action_shape)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        layers = [self._wait(w, 0, "starting", max(self.timeout, _START_TIMEOUT)) for w in range(W)]
        self.layers = layers[0]  # wrapper layers of a sub-env (load_state_dict checks checkpoints against it)

    def _start(self, ctx, W: int, make_args: bytes, layout: dict, action_shape: tuple) -> None:
        for w in range(W):
            parent_end, child_end = ctx.Pipe()
            go = ctx.Semaphore(0)
            done = self.all_done if self.lock is not None else ctx.Semaphore(0)
            p = ctx.Process(target=_env_worker, name=f"esper-env-worker-{w}", daemon=True,
                            args=(w, child_end, go, done, self.bounds[w], self.bounds[w + 1], make_args, self._raw,
                                  layout, action_shape, self.worker_spin_s, self.lock))
            self.conns.append(parent_end)
            self.gos.append(go)
            self.go_release.append(go.release)
            self.dones.append(done)
            p.start()
            self.procs.append(p)
            child_end.close()  # the worker holds the only other end: its death is an EOF here

    # ---------------------------------------------------------------------------------------------- messages
    def _where(self, w: int) -> str:
        lo, hi, N = self.bounds[w], self.bounds[w + 1], self.num_envs
        pid = self.procs[w].pid if w < len(self.procs) else None
        return (f"{self.env_id} env worker {w} (pid {pid}; sub-envs {lo}-{hi - 1} of {self.E}, members "
                f"{lo // N}-{(hi - 1) // N})")

    def _fail(self, w: int, what: str):
        self.failed = f"{self._where(w)} {what}"
        _shutdown(self.procs, self.conns, self.gos, self.cmd, grace=1.0)
        raise EnvWorkerError(self.failed)

    def _exit(self, w: int) -> str:
        p = self.procs[w]
        p.join(1.0)
        code = p.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _pipe(self, w: int, s: int, doing: str, timeout: float) -> tuple[str, object]:
        """Worker w's (status, payload) for command s through its pipe (replies of interrupted calls are skipped)."""
        conn = self.conns[w]
        while True:
            try:
                msg = conn.recv_bytes() if conn.poll(timeout) else None
            except (EOFError, OSError):
                msg = False
            if msg is None:
                self._fail(w, f"gave no reply within {timeout:g} s while {doing}")
            if msg is False:
                self._fail(w, f"died while {doing} ({self._exit(w)})")
            tag, status, payload = pickle.loads(msg)
            if tag >= s:
                return status, payload

    def _wait(self, w: int, s: int, doing: str = "stepping", timeout: float | None = None):
        """Wait until worker w has finished command s; a message's result, None for a step."""
        import time

        timeout = self.timeout if timeout is None else timeout
        done, acked = self.all_done or self.dones[w], self.acked
        while acked[w] < s:
            if done.acquire(False):
                continue
            deadline = time.monotonic() + timeout
            while not done.acquire(True, 0.05) and acked[w] < s:  # a lost wake-up costs 50 ms, never a hang
                for v, p in enumerate(self.procs):  # any worker: with one group semaphore, w may wait on another
                    if not p.is_alive():
                        self._fail(v, f"died while {doing} ({self._exit(v)})")
                if time.monotonic() > deadline:
                    self._fail(w, f"gave no reply within {timeout:g} s while {doing} (hung? worker_timeout "
                                  f"sets the limit)")
        if self.sent_kind[w] == _STEP and s == self.sent[w]:
            if self.status[w] == _ERROR:
                self._fail(w, f"raised while {doing}:\n{self._pipe(w, s, doing, timeout)[1].rstrip()}")
            return None
        status, payload = self._pipe(w, s, doing, timeout)
        if status == "error":
            self._fail(w, f"raised while {doing}:\n{payload.rstrip()}")
        return payload

    def _ready(self, workers: range | None = None) -> None:
        """Refuse after a failure; wait for commands left unfinished (a part still in flight, or a call interrupted by
        a KeyboardInterrupt) by ``workers`` (default: all).

        A call interrupted while it was handing its commands to the workers (``_posting``: a few microseconds
        per step) cannot tell which worker got its command: the group is then unusable (close it); a call
        interrupted while waiting for the workers (nearly always) is caught up here."""
        if self.failed is not None:
            raise EnvWorkerError(f"GroupEnvs unusable after an earlier failure: {self.failed}")
        if not self.procs:
            raise RuntimeError("GroupEnvs is closed")
        if self._posting:
            self.failed = (f"{self.env_id} env workers: a call was interrupted while it handed the workers their "
                           f"commands; which of them got theirs is unknown")
            _shutdown(self.procs, self.conns, self.gos, self.cmd, grace=1.0)
            raise EnvWorkerError(self.failed)
        for w in workers if workers is not None else range(len(self.procs)):
            if self.acked[w] < self.sent[w] or (self.sent_kind[w] == _STEP and self.status[w] == _ERROR):
                self._wait(w, self.sent[w], "finishing an earlier command")

    def _expect(self, n: int) -> None:
        """The next command goes to n workers (the count the last of them posts the group semaphore at)."""
        if self.lock is None:
            return
        if not self.lock.acquire(True, self.timeout):
            self._fail(0, f"(or another worker) held the group lock for {self.timeout:g} s")
        self.count[0], self.target[0] = 0, n
        self.lock.release()

    def _call(self, per_worker: dict[int, tuple], doing: str) -> dict[int, object]:
        self._ready()
        self._posting = True
        self._last += 1
        s = self._last
        self._expect(len(per_worker))
        for w, message in per_worker.items():
            data = pickle.dumps(message)
            try:
                self.conns[w].send_bytes(data)
                sent = True
            except (OSError, ValueError):
                sent = False
            if not sent:  # outside the except: one exception, not a chain
                self._fail(w, f"cannot be reached ({self._exit(w)})")
            self.cmd[w], self.seq[w] = _MESSAGE, s
            self.sent[w], self.sent_kind[w] = s, _MESSAGE
            self.go_release[w]()
        self._posting = False
        return {w: self._wait(w, s, doing) for w in per_worker}

    # ---------------------------------------------------------------------------------------------- API
    def post(self, actions: np.ndarray, part: int = 0) -> None:
        """Start stepping the sub-envs of ``part`` (one of the ``part_rows``) with ``actions`` [its rows,
        *action_shape]; :meth:`wait` for the results (views obs / reward / terminated / truncated, and reset_obs
        where an episode ended). Other parts may be in flight meanwhile."""
        w0, w1 = self.part_workers[part]
        workers = range(w0, w1)
        self._ready(workers)
        lo, hi = self.bounds[w0], self.bounds[w1]
        dtype = actions.dtype
        view = self._actions_as.get(dtype)
        if view is None:
            if dtype.hasobject or dtype.itemsize > _ACTION_ITEMSIZE or len(dtype.str) > 16:
                raise TypeError(f"actions of dtype {dtype} cannot be sent to env workers")
            view = self._actions_as[dtype] = _action_view(self.views, dtype, (self.E, *self.action_shape))
        code = dtype.str.encode()
        if code != self._code:  # the dtype field is shared by every worker: none may be stepping meanwhile
            self._ready()
            self._code_field[:] = 0
            self._code_field[:len(code)] = np.frombuffer(code, dtype=np.uint8)
            self._code = code
        view[lo:hi] = actions
        self._posting = True
        self._last += 1
        s = self._last
        self.cmd[w0:w1] = _STEP
        self.seq[w0:w1] = s
        self._expect(w1 - w0)
        for w in workers:
            self.sent[w], self.sent_kind[w] = s, _STEP
            self.go_release[w]()
        self._posting = False

    def wait(self, part: int = 0) -> None:
        """Wait until the sub-envs of ``part`` have stepped (see :meth:`post`)."""
        w0, w1 = self.part_workers[part]
        acked, status, s = self.acked, self.status, self.sent[w0]
        if self.spin_s > 0.0:  # poll the acknowledgements (no system call) before sleeping on the semaphores
            from time import perf_counter

            end = perf_counter() + self.spin_s
            while acked[w0:w1].min() < s and perf_counter() < end:
                pass
        for w in range(w0, w1):
            if acked[w] < s or status[w] == _ERROR:
                self._wait(w, s)
            else:  # done already: take its post now (no system call), or the semaphore's count would grow
                self.dones[w].acquire(False)

    def reset(self, seeds: list[int]) -> None:
        b = self.bounds
        self._call({w: ("reset", seeds[b[w]:b[w + 1]]) for w in range(len(self.procs))}, "resetting")

    def _worker_of(self, e: int) -> int:
        return int(np.searchsorted(self.bounds, e, side="right")) - 1

    def get_state(self, indices: list[int]) -> list[tuple]:
        """(sub_env_state with numpy arrays, action-space RNG state) of sub-envs ``indices`` (ascending)."""
        by: dict[int, list[int]] = {}
        for e in indices:
            w = self._worker_of(e)
            by.setdefault(w, []).append(e - self.bounds[w])
        replies = self._call({w: ("get_state", js) for w, js in by.items()}, "saving state")
        return [pair for w in sorted(replies) for pair in replies[w]]

    def set_state(self, items: list[tuple[int, list, dict]]) -> None:
        """items: (sub-env index, sub_env_state, action-space RNG state)."""
        by: dict[int, list] = {}
        for e, states, rng in items:
            w = self._worker_of(e)
            by.setdefault(w, []).append((e - self.bounds[w], _numpyise(states), rng))
        self._call({w: ("set_state", payload) for w, payload in by.items()}, "loading state")

    def stats(self) -> list[dict]:
        replies = self._call({w: ("stats", None) for w in range(len(self.procs))}, "reporting")
        return [replies[w] for w in range(len(self.procs))]

    def close(self) -> None:
        self._finalizer()  # _shutdown once (also run at garbage collection and interpreter exit)


class GroupEnvs:
    """K members x N sub-envs each; sub-env e = member k, index i with e = k*N + i (member-major).

    Per member, bitwise what gymnasium's SyncVectorEnv of N such wrapped envs reset with ``seeds[k] + i`` returns: SAME_STEP
    autoreset (the step that ends an episode resets that sub-env; ``final_obs`` holds the ended episode's last
    observation, normalised like ``obs``), CleanRL's wrappers inside each sub-env (RecordEpisodeStatistics innermost
    on raw rewards, ClipAction, NormalizeObservation + clip, NormalizeReward + clip), each sub-env with its own
    running statistics. Observations are returned as float64 (the wrapper stack gives float32 when normalising and
    for float32 envs such as CartPole: the float64 values are those float32 values exactly).

    ``workers=0`` (default): the E = K * N raw envs are stepped in a loop in this process. ``workers=W >= 1``: they
    are split into min(W, E) contiguous slices, each built and stepped in its own worker process (``start_method``
    "spawn" or "forkserver", never fork); the wrappers stay here, so every output and ``state_dict`` is bitwise
    that of ``workers=0`` and checkpoints move freely between the two. A worker that dies, raises or gives no reply
    within ``worker_timeout`` seconds raises ``EnvWorkerError`` here (with its traceback); ``close()`` stops the
    workers (they also exit when this process dies, and ignore Ctrl-C). With workers, ``envs`` is empty.
    ``spin_us``: how long this process polls the workers' acknowledgements before sleeping on their semaphores;
    ``worker_spin_us``: how long a worker polls its semaphore after a step before sleeping on it (0: sleep at once;
    spinning saves a wake-up but burns a core meanwhile: only where cores are spare).
    """

    def __init__(self, env_id: str, seeds: list[int], num_envs: int, gamma: float, *, clip_action: bool = False,
                 normalize_obs: bool = False, normalize_reward: bool = False, clip_obs: float = 10.0,
                 clip_reward: float = 10.0, max_episode_steps: int | None = None, kwargs: dict | None = None,
                 workers: int = 0, start_method: str = "spawn", worker_timeout: float = 60.0,
                 spin_us: float = 0.0, worker_spin_us: float = 0.0, parts: list[tuple[int, int]] | None = None):
        if env_id not in gym.registry:
            raise ValueError(f"unknown gymnasium env id {env_id!r}; see gymnasium.registry for the allowed ids")
        if len(seeds) < 1 or num_envs < 1:
            raise ValueError(f"need at least one member and one env per member (got {len(seeds)} seeds, "
                             f"num_envs={num_envs})")
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ValueError(f"workers must be an int >= 0 (0: step the envs in this process), got {workers!r}")
        if start_method not in _START_METHODS:
            raise ValueError(f"start_method must be one of {', '.join(_START_METHODS)} (never fork: this process may "
                             f"hold CUDA and torch threads), got {start_method!r}")
        self._workers: _EnvWorkers | None = None
        self.envs: list[gym.Env] = []
        self.env_id, self.seeds = env_id, [int(s) for s in seeds]
        self.num_members, self.num_envs = len(self.seeds), int(num_envs)
        self.gamma, self.clip_obs, self.clip_reward = gamma, clip_obs, clip_reward
        self.clip_action, self.normalize_obs_on, self.normalize_reward_on = clip_action, normalize_obs, normalize_reward
        self.epsilon = 1e-8  # NormalizeObservation's and NormalizeReward's default
        E = self.num_members * self.num_envs
        kwargs = dict(kwargs or {})
        kwargs.pop("disable_env_checker", None)

        def make() -> gym.Env:
            return gym.make(env_id, max_episode_steps=max_episode_steps, disable_env_checker=True, **kwargs)

        with _quiet_settotalmass():
            self.envs = [make()]
            act, obs_space = self.envs[0].action_space, self.envs[0].observation_space
            problem = None
            if not (isinstance(act, gym.spaces.Discrete) or (isinstance(act, gym.spaces.Box) and len(act.shape) == 1)):
                problem = f"unsupported action space {act}; allowed: Discrete, 1-D Box"
            elif clip_action and not isinstance(act, gym.spaces.Box):
                problem = f"clip_action needs a Box action space, got {act}"
            elif not isinstance(obs_space, gym.spaces.Box):
                problem = f"unsupported observation space {obs_space}; allowed: Box"
            if problem is not None:
                self.close()
                raise ValueError(f"{env_id}: {problem}")
            if workers == 0:
                self.envs += [make() for _ in range(E - 1)]
            else:  # the first env only checked the spaces: the workers build all E
                self.envs.pop().close()

        self.env_action_space = act  # the env's own space (bounded); single_action_space is the wrapper stack's
        self.single_action_space = (gym.spaces.Box(-np.inf, np.inf, shape=act.shape, dtype=act.dtype) if clip_action
                                    else act)  # as the wrapped env exposes it (ClipAction's unbounded Box)
        self.single_observation_space = (gym.spaces.Box(-np.inf, np.inf, shape=obs_space.shape, dtype=np.float32)
                                         if normalize_obs else obs_space)
        self.obs_shape = tuple(obs_space.shape)
        self.obs_dim = int(np.prod(self.obs_shape))
        self.action_shape = tuple(act.shape)
        self._low, self._high = (act.low, act.high) if clip_action else (None, None)
        self._step_fns = [e.step for e in self.envs]
        self._raw_dtype = obs_space.dtype
        self.num_workers = min(int(workers), E)
        # parts: member ranges stepped separately (step_async / step_wait), so that one part's envs step while the
        # caller computes another's actions; honoured where each part can have its own workers (or without workers)
        parts = [(int(a), int(b)) for a, b in parts] if parts else [(0, self.num_members)]
        if [b for _, b in parts[:-1]] != [a for a, _ in parts[1:]] or parts[0][0] != 0 \
                or parts[-1][1] != self.num_members or any(b <= a for a, b in parts):
            raise ValueError(f"parts {parts} do not split the {self.num_members} members into consecutive ranges")
        if self.num_workers and (self.num_workers < len(parts) or _ONE_WAKEUP):
            parts = [(0, self.num_members)]
        self.parts = parts
        self._pending: dict[int, np.ndarray] = {}  # in-process: a part's actions between step_async and step_wait
        if self.num_workers:
            spec = gym.registry[env_id]
            try:  # the spec, not the id: an env registered only in this process is still found by the workers
                make_args = pickle.dumps((spec, max_episode_steps, kwargs))
            except Exception:  # noqa: BLE001 - e.g. an entry point that is a lambda: fall back to the id
                make_args = None
            if make_args is None:
                try:
                    make_args = pickle.dumps((env_id, max_episode_steps, kwargs))
                except Exception as e:  # noqa: BLE001 - any pickling error: one line saying so
                    raise ValueError(f"{env_id}: env kwargs cannot be sent to env worker processes: {e}") from None
            self._workers = _EnvWorkers(self.num_workers, env_id, make_args, E, self.num_envs, self.obs_shape,
                                        self._raw_dtype, self.action_shape, worker_timeout, start_method, spin_us,
                                        worker_spin_us, [(a * self.num_envs, b * self.num_envs) for a, b in parts])

        # RecordEpisodeStatistics
        self.episode_returns = np.zeros(E, dtype=np.float64)
        self.episode_lengths = np.zeros(E, dtype=np.int64)
        # NormalizeObservation: RunningMeanStd(shape, dtype=float32) per sub-env (float64 after the first update
        # when the env's observations are float64, as in gymnasium)
        self.obs_mean = np.zeros((E, *self.obs_shape), dtype=np.float32)
        self.obs_var = np.ones((E, *self.obs_shape), dtype=np.float32)
        self.obs_count = np.full(E, 1e-4, dtype=np.float64)
        # NormalizeReward: discounted return and RunningMeanStd(shape=()) per sub-env
        self.discounted_reward = np.zeros(E, dtype=np.float64)
        self.return_mean = np.zeros(E, dtype=np.float64)
        self.return_var = np.ones(E, dtype=np.float64)
        self.return_count = np.full(E, 1e-4, dtype=np.float64)
        self._has_reset = False

    # ------------------------------------------------------------------------------------------------ wrappers
    def _observe(self, raw: np.ndarray, rows=None) -> np.ndarray:
        """NormalizeObservation (update with a batch of one per sub-env, then normalise, float32) + clip, for all
        sub-envs or the sub-envs ``rows``; identity without normalisation."""
        if not self.normalize_obs_on:
            return raw
        if rows is None:
            self.obs_mean, self.obs_var, self.obs_count = _rms_update(self.obs_mean, self.obs_var, self.obs_count, raw)
            mean, var = self.obs_mean, self.obs_var
        else:
            mean, var, count = _rms_update(self.obs_mean[rows], self.obs_var[rows], self.obs_count[rows], raw)
            if mean.dtype != self.obs_mean.dtype or var.dtype != self.obs_var.dtype:
                raise RuntimeError("observation statistics changed dtype after the first update")
            self.obs_mean[rows], self.obs_var[rows], self.obs_count[rows] = mean, var, count
        return self._normalise(raw, mean, var)

    def _normalise(self, raw: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        """np.float32((obs - mean) / np.sqrt(var + epsilon)), then clipped to +-clip_obs (in float32)."""
        den = var + self.epsilon
        np.sqrt(den, out=den)
        out = raw - mean
        out /= den
        out = out.astype(np.float32)
        return _clip(out, -self.clip_obs, self.clip_obs, out=out)

    def _reward(self, raw: np.ndarray, terminated: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """NormalizeReward (discounted return reset by termination only, never by truncation or reset) + clip, for all
        sub-envs or the sub-envs ``rows``."""
        if not self.normalize_reward_on:
            return raw
        r = slice(None) if rows is None else rows
        discounted = self.discounted_reward[r] * self.gamma
        discounted *= ~terminated  # * (1 - terminated): x * 1 = x, x * 0 = +-0
        discounted += raw
        mean, var, count = _rms_update(self.return_mean[r], self.return_var[r], self.return_count[r], discounted)
        if rows is None:
            self.discounted_reward, self.return_mean, self.return_var, self.return_count = discounted, mean, var, count
        else:
            self.discounted_reward[r], self.return_mean[r], self.return_var[r], self.return_count[r] = (
                discounted, mean, var, count)
        den = var + self.epsilon
        np.sqrt(den, out=den)
        reward = raw / den
        return _clip(reward, -self.clip_reward, self.clip_reward, out=reward)

    def _out(self, obs: np.ndarray) -> np.ndarray:
        return obs.astype(np.float64, copy=False).reshape(self.num_members, self.num_envs, self.obs_dim)

    # ------------------------------------------------------------------------------------------------ API
    def reset(self) -> np.ndarray:
        """Reset member k's sub-env i with seed seeds[k] + i (and seed its action space the same)."""
        N = self.num_envs
        E = self.num_members * N
        if self._workers is not None:
            self._workers.reset([self.seeds[e // N] + e % N for e in range(E)])
            raw = self._workers.views["obs"].copy()
        else:
            raw = np.empty((E, *self.obs_shape), dtype=self._raw_dtype)
            for e, env in enumerate(self.envs):
                seed = self.seeds[e // N] + e % N
                raw[e], _ = env.reset(seed=seed)
                env.action_space.seed(seed)
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0
        self._has_reset = True
        return self._out(self._observe(raw))

    def step(self, actions: np.ndarray) -> GroupStep:
        """Step every member's sub-envs with actions [K, N, ...] (all parts at once)."""
        if len(self.parts) == 1:
            self.step_async(actions, 0)
            return self.step_wait(0)
        actions = np.asarray(actions).reshape(self.num_members, self.num_envs, *self.action_shape)
        for i, (a, b) in enumerate(self.parts):
            self.step_async(actions[a:b], i)
        steps = [self.step_wait(i) for i in range(len(self.parts))]
        return GroupStep(*(np.concatenate([getattr(st, f) for st in steps]) for f in
                           ("obs", "reward", "terminated", "truncated", "final_obs")),
                         [ep for st in steps for ep in st.episodes])

    def step_async(self, actions: np.ndarray, part: int = 0) -> None:
        """Start stepping the sub-envs of members ``parts[part]`` with their actions [members, N, ...]; with env
        workers they step while the caller goes on. :meth:`step_wait` returns the results. Without workers the
        actions are read at step_wait: the caller leaves them unchanged until then."""
        a, b = self.parts[part]
        actions = np.asarray(actions).reshape((b - a) * self.num_envs, *self.action_shape)
        if self.clip_action:
            actions = _clip(actions, self._low, self._high)
        if self._workers is not None:
            self._workers.post(actions, part)
        else:
            self._pending[part] = actions

    def step_wait(self, part: int = 0) -> GroupStep:
        """The step started by :meth:`step_async` for ``parts[part]``: a GroupStep of those members (member
        indices in ``episodes`` are the group's)."""
        a, b = self.parts[part]
        N = self.num_envs
        lo, hi = a * N, b * N
        E = hi - lo
        whole = E == self.num_members * N
        rows = None if whole else slice(lo, hi)
        if self._workers is not None:  # SAME_STEP: the workers also reset every sub-env that ended (reset_obs)
            self._workers.wait(part)
            shared = self._workers.views
            raw_obs, raw_reward = shared["obs"][lo:hi].copy(), shared["reward"][lo:hi].copy()
            terminated, truncated = shared["terminated"][lo:hi].copy(), shared["truncated"][lo:hi].copy()
        else:
            actions = self._pending.pop(part)
            raw_obs = np.empty((E, *self.obs_shape), dtype=self._raw_dtype)
            raw_reward = np.empty(E, dtype=np.float64)
            terminated = np.empty(E, dtype=bool)
            truncated = np.empty(E, dtype=bool)
            for j, step in enumerate(self._step_fns[lo:hi]):
                raw_obs[j], raw_reward[j], terminated[j], truncated[j], _ = step(actions[j])

        self.episode_returns[lo:hi] += raw_reward  # RecordEpisodeStatistics sees raw rewards
        self.episode_lengths[lo:hi] += 1
        obs = self._observe(raw_obs, rows)
        reward = self._reward(raw_reward, terminated, rows)

        obs = obs.astype(np.float64, copy=False).reshape(b - a, N, self.obs_dim)
        final_obs = obs.copy()
        episodes: list[tuple[int, int, float, int]] = []
        done = np.flatnonzero(terminated | truncated)
        if done.size:  # SAME_STEP autoreset: record the episode, keep its last obs, reset the sub-env
            if self._workers is not None:
                reset_raw = self._workers.views["reset_obs"][lo + done]
            else:
                reset_raw = np.empty((done.size, *self.obs_shape), dtype=self._raw_dtype)
            for j, e in enumerate((lo + done).tolist()):
                episodes.append((e // N, e % N, float(self.episode_returns[e]), int(self.episode_lengths[e])))
                if self._workers is None:
                    reset_raw[j], _ = self.envs[e].reset()
            self.episode_returns[lo + done] = 0.0
            self.episode_lengths[lo + done] = 0
            obs.reshape(E, self.obs_dim)[done] = self._observe(reset_raw, lo + done).reshape(done.size, self.obs_dim)
        return GroupStep(obs, reward.reshape(b - a, N), terminated.reshape(b - a, N), truncated.reshape(b - a, N),
                         final_obs, episodes)

    def normalize_obs(self, raw: np.ndarray, member: int) -> np.ndarray:
        """Raw observations [P, obs_dim] as member's policy sees them now: its sub-env 0's running normalisation,
        float32 rounding and clip (what that sub-env's wrappers would return, without updating the statistics);
        float64 out. Identity (as float64) without normalisation."""
        raw = np.asarray(raw)
        if not self.normalize_obs_on:
            return raw.astype(np.float64)
        e = self._rows(member).start
        return self._normalise(raw, self.obs_mean[e].reshape(-1), self.obs_var[e].reshape(-1)).astype(np.float64)

    def _rows(self, member: int) -> slice:
        if not 0 <= member < self.num_members:
            raise IndexError(f"member {member} out of range for a group of {self.num_members}")
        return slice(member * self.num_envs, (member + 1) * self.num_envs)

    def state_dict(self, member: int) -> dict:
        """Everything member's sub-envs need to continue bitwise: per sub-env the raw env's layers (time-limit
        counter, RNG, MuJoCo integration state or classic-control state) and its action space's RNG, plus the
        wrappers' rows (running statistics, discounted return, episode accumulators). Tensors and plain Python
        only: torch.load(weights_only=True) reads it back."""
        if not self._has_reset:
            raise RuntimeError("GroupEnvs.state_dict before reset()")
        import torch

        rows = self._rows(member)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a[rows], copy=True))

        if self._workers is not None:
            pairs = self._workers.get_state(list(range(rows.start, rows.stop)))
            sub_envs, action_rngs = [_tensorise(s) for s, _ in pairs], [r for _, r in pairs]
        else:
            sub_envs = [sub_env_state(env) for env in self.envs[rows]]
            action_rngs = [env.action_space.np_random.bit_generator.state for env in self.envs[rows]]
        return {
            "env_id": self.env_id, "num_envs": self.num_envs, "seed": self.seeds[member],
            "sub_envs": sub_envs, "action_space_rng": action_rngs,
            "episode_returns": t(self.episode_returns), "episode_lengths": t(self.episode_lengths),
            "obs_rms": {"mean": t(self.obs_mean), "var": t(self.obs_var), "count": t(self.obs_count)},
            "discounted_reward": t(self.discounted_reward),
            "return_rms": {"mean": t(self.return_mean), "var": t(self.return_var), "count": t(self.return_count)},
        }

    def load_state_dict(self, member: int, state: dict) -> None:
        rows = self._rows(member)
        if state["env_id"] != self.env_id or state["num_envs"] != self.num_envs:
            raise ValueError(f"env state is for {state['env_id']} x {state['num_envs']} envs, this group runs "
                             f"{self.env_id} x {self.num_envs}")
        if not self._has_reset:  # the statistics take their float64 dtype at the first update (reset)
            self.reset()
        if self._workers is not None:
            items = list(zip(range(rows.start, rows.stop), state["sub_envs"], state["action_space_rng"], strict=True))
            for _, s, _ in items:  # checked here, as load_sub_env_state checks it in-process
                if len(s) != self._workers.layers:
                    raise ValueError(f"checkpoint has {len(s)} env layers, this env has {self._workers.layers}: "
                                     f"different wrappers")
            self._workers.set_state(items)
        else:
            for env, s, rng in zip(self.envs[rows], state["sub_envs"], state["action_space_rng"], strict=True):
                load_sub_env_state(env, s)
                env.action_space.np_random.bit_generator.state = rng
        for name, key in (("episode_returns", None), ("episode_lengths", None), ("discounted_reward", None),
                          ("obs_mean", ("obs_rms", "mean")), ("obs_var", ("obs_rms", "var")),
                          ("obs_count", ("obs_rms", "count")), ("return_mean", ("return_rms", "mean")),
                          ("return_var", ("return_rms", "var")), ("return_count", ("return_rms", "count"))):
            value = state[name] if key is None else state[key[0]][key[1]]
            value = value.numpy()
            target = getattr(self, name)
            if value.dtype != target.dtype or value.shape != target[rows].shape:
                raise ValueError(f"env state {name}: {value.dtype}{list(value.shape)} does not fit "
                                 f"{target.dtype}{list(target[rows].shape)}")
            target[rows] = value

    def worker_stats(self) -> list[dict]:
        """Per worker, since the previous call: group steps served and seconds spent stepping its sub-envs
        ({"steps", "busy_s"}); [] without workers. For measuring where a step's time goes."""
        return self._workers.stats() if self._workers is not None else []

    def close(self) -> None:
        """Close the envs (with workers: stop the worker processes). Idempotent."""
        if self._workers is not None:
            self._workers.close()
        for env in self.envs:
            env.close()
        self.envs = []
        self._step_fns = []
