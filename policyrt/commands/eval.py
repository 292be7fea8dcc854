"""`policyrt eval`: closed-loop evaluation of a bundle against P simulated environments."""

from __future__ import annotations

import argparse
import sys
import time

DESCRIPTION = """\
Evaluate a bundle in closed loop, over the wire protocol: a sim server process runs --parallel P
copies of the environment, a controller process steps ONE session of batch P (each slot resetting
on its own), and N episodes are spread over the P slots. Episode k always resets with a seed
derived from (--seed, k), so runs with the same seed play the same episodes whatever P is; the
scripted expert replays them for reference. Prints the returns and the throughput; --report DIR
writes report.json, report.md and PNG plots (return per episode with the expert's, latency
histograms). --compare evaluates a second bundle, or the same bundle on --compare-backend or with
--compare-target-return, on the same seeds and reports the return difference. SIGINT or SIGTERM
stops both processes (each says BYE) and ends the evaluation with exit 0 and no report."""

EXAMPLES = """\
examples:
  policyrt eval bundles/inverted-pendulum-xlstm.policy --env InvertedPendulum-v5 --episodes 20 --parallel 10 --report eval/
  policyrt eval bundles/inverted-pendulum-xlstm.policy --env InvertedPendulum-v5 --episodes 4 --compare-backend torch
  policyrt eval a.policy --env InvertedDoublePendulum-v5 --episodes 50 --parallel 16 --compare b.policy --report ab/
  policyrt eval bundles/double-pendulum-dt.policy --env InvertedDoublePendulum-v5 --episodes 20 --parallel 10 \
      --compare-target-return 500   # does asking for less give less?"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="closed-loop evaluation: N episodes over P parallel environments, report and plots",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory (NAME.policy/) or .tar")
    p.add_argument("--env", required=True, metavar="ENV_ID", help="Gymnasium MuJoCo id, e.g. InvertedPendulum-v5")
    p.add_argument("--episodes", type=int, required=True, metavar="N", help="episodes to play in total")
    p.add_argument("--parallel", type=int, default=1, metavar="P",
                   help="environments at once, one session of batch P (default 1; capped at N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation (default 0)")
    p.add_argument("--max-episode-steps", type=int, metavar="T", help="time limit (default: the environment's)")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md and PNG plots there")
    p.add_argument("--compare", metavar="BUNDLE2", help="also evaluate this bundle on the same seeds")
    p.add_argument("--compare-backend", metavar="B2",
                   help="backend of the comparison (default: --backend); without --compare, the same bundle")
    p.add_argument("--compare-target-return", type=float, metavar="R2",
                   help="return commanded in the comparison; without --compare, the same bundle: a lower R2 "
                   "shows whether return conditioning works (the report gives the return difference)")
    from policyrt.commands._session_args import add_session_arguments

    add_session_arguments(p, applies_to="the controller process")
    p.set_defaults(handler=handle)
    return p


class _Progress:
    """Episodes done per run: one rewritten line on a terminal, a line per tenth otherwise (logs)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = (None, -1)
        self._started = time.monotonic()
        self._line_open = False  # a terminal line written without its newline yet

    def __call__(self, label: str, done: int, total: int) -> None:
        tenth = done * 10 // total
        if done == 0:  # a run starts (process start-up and session loading count from here)
            self._started = time.monotonic()
        elapsed = time.monotonic() - self._started
        text = f"eval {label}: {done}/{total} episodes, {elapsed:.0f} s"
        if self.tty:
            self._line_open = done != total
            self.stream.write("\r" + text + ("" if self._line_open else "\n"))
        elif (label, tenth) != self._last:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last = (label, tenth)

    def end_line(self) -> None:
        """Before another message: end a progress line left open on a terminal."""
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False


def handle(args) -> int:
    from policyrt.commands._session_args import session_from_args, untrusted
    from policyrt.sim.eval_report import summary_lines, write_report
    from policyrt.sim.evaluate import Candidate, EvalConfig, EvalError, evaluate
    from policyrt.sim.processes import Interrupted

    parallel = min(args.parallel, args.episodes) if args.episodes >= 1 else args.parallel
    if parallel != args.parallel:
        print(f"policyrt eval: --parallel {args.parallel} > --episodes {args.episodes}: using {parallel} environments",
              file=sys.stderr)
    session = session_from_args(args)
    if refused := untrusted(session, [args.bundle, args.compare or args.bundle]):
        print(f"policyrt eval: {refused}", file=sys.stderr)
        return 2
    cfg = EvalConfig(env_id=args.env, episodes=args.episodes, parallel=parallel, seed=args.seed,
                     max_episode_steps=args.max_episode_steps, controller_threads=session.threads)
    candidate = Candidate(args.bundle, session.backend, session.target_return)
    compare = None
    if args.compare or args.compare_backend or args.compare_target_return is not None:
        target = session.target_return if args.compare_target_return is None else args.compare_target_return
        compare = Candidate(args.compare or args.bundle, args.compare_backend or session.backend, target)
    progress = _Progress()
    try:
        report = evaluate(cfg, candidate, compare, progress=progress)
    except Interrupted as stopped:  # the closed loop's processes were stopped and reaped
        progress.end_line()
        print(f"policyrt eval: {stopped}; no report, no process left running", file=sys.stderr)
        return 0
    except EvalError as err:
        print(f"policyrt eval: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a closed loop that failed or lost count: its output is in the message
        print(f"policyrt eval: {err}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(report)))
    if args.report:
        for path in write_report(report, args.report):
            print(f"wrote {path}")
    return 0
