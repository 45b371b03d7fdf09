//! The fd renumbering plan: which steps put the inherited descriptors at 3, 4, 5, … in the
//! child.
//!
//! The parent holds the descriptors it hands over at arbitrary numbers (`sources`); the child
//! must find `sources[i]` at `first + i` (`first` is normally [`FIRST_INHERITED_FD`]). The
//! renumbering runs in the child after `fork` and before `exec`, where only async-signal-safe
//! calls are allowed and nothing may allocate. So the decisions are made here, in the parent,
//! by the pure function [`plan`], and an adapter's executor runs the resulting [`Step`]s in
//! order without thinking: each step is one system call.
//!
//! # The problem
//!
//! Renumbering is a *parallel move*: every target `first + i` receives `sources[i]`, but a
//! source may itself sit inside the target range `[first, first + n)`, in any order, and the
//! same source may feed several targets. A naive loop of `dup2(sources[i], first + i)`
//! clobbers a source that a later step still reads (`3 → 4, 4 → 3` ends with the same socket
//! at both numbers). Two more traps:
//!
//! - The child inherits every open fd of the parent, and all of them (except stdio) have
//!   `FD_CLOEXEC` set. Some belong to the runtime (std's `Command` keeps a pipe open to report
//!   an `exec` failure), so the plan may write no fd outside the target range. Temporaries are
//!   therefore made with `fcntl(fd, F_DUPFD_CLOEXEC, first + n)`, which lets the kernel pick
//!   the lowest *free* fd at or above the range; since that number is only known at run time,
//!   a step refers to a temporary by its *slot* ([`Source::Stash`]).
//! - The targets must end up without `FD_CLOEXEC`, or `exec` closes them. `dup2` clears the
//!   flag on the new fd, but `dup2(fd, fd)` does nothing at all, so a source that already sits
//!   at its target gets an explicit [`Step::ClearCloexec`] instead.
//!
//! # The algorithm
//!
//! Index `i` is *fixed* when `sources[i] == first + i` (one [`Step::ClearCloexec`]), otherwise
//! it needs one [`Step::Dup2`] into `first + i`, which may run once no pending move still
//! reads the old `first + i`. Moves are emitted as soon as they are safe, following chains
//! (writing `first + i` may free the target its source sits on); what is left when nothing is
//! safe is a set of disjoint cycles of in-range sources, and each cycle is broken by stashing
//! one of its fds in a temporary, which its one remaining reader then reads, and which is
//! closed right after. It runs in `O(n)` time and memory.
//!
//! # Guarantees
//!
//! For `sources` of length `n`, when the steps of `plan(sources, first)` run in order in a
//! child whose fd table is a copy of the parent's:
//!
//! - fd `first + i` refers to the open file description that `sources[i]` referred to, and
//!   has `FD_CLOEXEC` clear, for every `i`;
//! - no fd outside `[first, first + n)` is written, closed or has its flags changed; the only
//!   fds the plan opens there are its temporaries, all closed again by the last step;
//! - no step reads an fd after a step has written it: a source is read either from its own
//!   fd, still untouched, or from the temporary it was stashed in;
//! - no [`Step::Dup2`] has `from == to`;
//! - a temporary is made only for a cycle of sources inside the target range (such as
//!   `3 → 4, 4 → 3`), one per cycle, and at most one temporary is open at any time; sources
//!   outside the range, or inside it but not overwritten, are read where they are;
//! - there are exactly `n + 2 × stashes` steps (one move or clear per index, one stash and one
//!   close per cycle), so never more than `2n`.
//!
//! The plan does not know which fds are open in the child: if a source is not open, its
//! `dup2` (or `fcntl`) fails with `EBADF`, and the executor reports it.
//!
//! # Running a plan
//!
//! The executor allocates `plan.stash_slots()` fd slots *before* `fork`, then in the child
//! runs each step as one call and stops at the first failure (retrying on `EINTR`):
//!
//! | Step | Call |
//! |------|------|
//! | [`Step::Stash`] `{ fd, slot, min }` | `stash[slot] = fcntl(fd, F_DUPFD_CLOEXEC, min)` |
//! | [`Step::Dup2`] `{ from, to }` | `dup2(from, to)`, `from` being `fd` or `stash[slot]` |
//! | [`Step::ClearCloexec`] `{ fd }` | `fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) & !FD_CLOEXEC)` |
//! | [`Step::CloseStash`] `{ slot }` | `close(stash[slot])` |
//!
//! [`FIRST_INHERITED_FD`]: crate::FIRST_INHERITED_FD

use std::fmt;
use std::ops::Range;

use crate::Fd;

/// The highest `first + sources.len()` that [`plan`] accepts (the targets lie below it).
///
/// 2^20 = 1,048,576 is Linux's default `fs.nr_open`, the ceiling on the fd numbers of any
/// process. Real plans end far below (at 3 plus a handful of sockets); the limit keeps a
/// wrong `first` or a runaway list from producing a plan no kernel can run.
pub const MAX_TARGET_END: Fd = 1 << 20;

/// Where a [`Step::Dup2`] reads its descriptor from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A source fd of the parent, read where it is (nothing has written it yet).
    Fd(Fd),
    /// The temporary fd in this stash slot, made by an earlier [`Step::Stash`].
    Stash(usize),
}

/// One step of a [`Plan`]: one system call for the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// `stash[slot] = fcntl(fd, F_DUPFD_CLOEXEC, min)`: copy `fd` to the lowest free fd at or
    /// above `min` (the end of the target range), close-on-exec, before `fd` is overwritten.
    Stash {
        /// The in-range source fd to keep.
        fd: Fd,
        /// The slot the executor records the new fd in.
        slot: usize,
        /// The lowest fd number the temporary may take: `first + n`.
        min: Fd,
    },
    /// `dup2(from, to)`: `to` now refers to `from`'s file and has `FD_CLOEXEC` clear.
    ///
    /// `from` never equals `to` (for a source that is already in place, see
    /// [`Step::ClearCloexec`]).
    Dup2 {
        /// The descriptor to copy.
        from: Source,
        /// The target fd, in `[first, first + n)`.
        to: Fd,
    },
    /// Clear `FD_CLOEXEC` on `fd`: a source that already sits at its target.
    ClearCloexec {
        /// The target fd, in `[first, first + n)`.
        fd: Fd,
    },
    /// `close(stash[slot])`: the temporary has been read by every step that needed it.
    CloseStash {
        /// The slot of the temporary to close.
        slot: usize,
    },
}

/// The steps that put `sources[i]` at `first + i`; made by [`plan`].
///
/// See the [module docs](self) for what a plan guarantees and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    steps: Vec<Step>,
    stash_slots: usize,
    targets: Range<Fd>,
}

impl Plan {
    /// The steps, to be run in this order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// How many stash slots the steps use (slots are numbered `0..stash_slots()`, each filled
    /// by one [`Step::Stash`] and closed by one [`Step::CloseStash`]); the executor allocates
    /// them before `fork`.
    pub fn stash_slots(&self) -> usize {
        self.stash_slots
    }

    /// The target fds, `first..first + n`: where the child finds the descriptors.
    pub fn targets(&self) -> Range<Fd> {
        self.targets.clone()
    }
}

/// Why [`plan`] refused its input (a mistake of the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// A source fd is negative.
    NegativeSource {
        /// The position of the source in the list.
        index: usize,
        /// The fd given.
        fd: Fd,
    },
    /// The first target fd is negative.
    NegativeFirst {
        /// The fd given.
        first: Fd,
    },
    /// The target range would end above [`MAX_TARGET_END`] (or overflow an fd number).
    RangeTooHigh {
        /// The first target fd.
        first: Fd,
        /// The number of sources.
        len: usize,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NegativeSource { index, fd } => {
                write!(f, "source #{index} is fd {fd}, which is negative")
            }
            Self::NegativeFirst { first } => {
                write!(f, "the first target fd is {first}, which is negative")
            }
            Self::RangeTooHigh { first, len } => write!(
                f,
                "{len} fds from fd {first} on would end above fd {MAX_TARGET_END}"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

impl From<PlanError> for std::io::Error {
    fn from(e: PlanError) -> Self {
        Self::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// Plans the steps that put `sources[i]` at fd `first + i` in the child, for every `i`.
///
/// `sources` are fds of the parent (the child inherits them at the same numbers); they may
/// be anywhere, inside the target range too, in any order, and repeated. See the
/// [module docs](self) for the algorithm, its guarantees and how to run the steps.
///
/// # Errors
///
/// [`PlanError`] if a source or `first` is negative, or if the range would end above
/// [`MAX_TARGET_END`].
///
/// # Examples
///
/// Two listeners at 4 and 3 that must swap places: one is kept in a temporary first.
///
/// ```
/// use endless_core::plan::{Source, Step, plan};
///
/// let swap = plan(&[4, 3], 3)?;
/// assert_eq!(swap.targets(), 3..5);
/// assert_eq!(swap.stash_slots(), 1);
/// assert_eq!(
///     swap.steps(),
///     [
///         Step::Stash { fd: 3, slot: 0, min: 5 },
///         Step::Dup2 { from: Source::Fd(4), to: 3 },
///         Step::Dup2 { from: Source::Stash(0), to: 4 },
///         Step::CloseStash { slot: 0 },
///     ]
/// );
///
/// // Sources outside the range are read where they are; one already in place is only
/// // made inheritable.
/// let mixed = plan(&[9, 4, 9], 3)?;
/// assert_eq!(
///     mixed.steps(),
///     [
///         Step::ClearCloexec { fd: 4 },
///         Step::Dup2 { from: Source::Fd(9), to: 3 },
///         Step::Dup2 { from: Source::Fd(9), to: 5 },
///     ]
/// );
/// # Ok::<(), endless_core::plan::PlanError>(())
/// ```
pub fn plan(sources: &[Fd], first: Fd) -> Result<Plan, PlanError> {
    if first < 0 {
        return Err(PlanError::NegativeFirst { first });
    }
    if let Some((index, &fd)) = sources.iter().enumerate().find(|&(_, &fd)| fd < 0) {
        return Err(PlanError::NegativeSource { index, fd });
    }
    let len = sources.len();
    let end = Fd::try_from(len)
        .ok()
        .and_then(|n| first.checked_add(n))
        .filter(|&end| end <= MAX_TARGET_END)
        .ok_or(PlanError::RangeTooHigh { first, len })?;

    let mut planner = Planner::new(sources, first, end);
    planner.clear_fixed();
    // Moves that are safe now, and the chains they unblock.
    for i in 0..len {
        planner.run_chain(i);
    }
    // Whatever is still pending is a union of cycles: break each one with a stash.
    for i in 0..len {
        if planner.pending[i] {
            planner.stash(i);
            planner.run_chain(i);
        }
    }
    debug_assert!(planner.pending.iter().all(|p| !p));
    debug_assert_eq!(planner.steps.len(), len + 2 * planner.stash_readers.len());
    Ok(Plan {
        steps: planner.steps,
        stash_slots: planner.stash_readers.len(),
        targets: first..end,
    })
}

/// The working state of [`plan`]. Index `i` stands for target fd `first + i`.
struct Planner<'a> {
    sources: &'a [Fd],
    first: Fd,
    end: Fd,
    /// Whether index `i` still needs its `dup2`.
    pending: Vec<bool>,
    /// How many pending moves read the fd `first + i` directly.
    readers: Vec<usize>,
    /// The stash slot holding the original of fd `first + i`, once stashed.
    stashed_in: Vec<Option<usize>>,
    /// How many pending moves read each stash slot.
    stash_readers: Vec<usize>,
    steps: Vec<Step>,
}

impl<'a> Planner<'a> {
    fn new(sources: &'a [Fd], first: Fd, end: Fd) -> Self {
        let len = sources.len();
        let mut planner = Self {
            sources,
            first,
            end,
            pending: vec![false; len],
            readers: vec![0; len],
            stashed_in: vec![None; len],
            stash_readers: Vec::new(),
            steps: Vec::with_capacity(2 * len),
        };
        for (i, &fd) in sources.iter().enumerate() {
            if fd != planner.target(i) {
                planner.pending[i] = true;
                if let Some(k) = planner.index_of(fd) {
                    planner.readers[k] += 1;
                }
            }
        }
        planner
    }

    /// The target fd of index `i`.
    fn target(&self, i: usize) -> Fd {
        let i = Fd::try_from(i).expect("i < len, and first + len <= MAX_TARGET_END");
        self.first + i
    }

    /// The index whose target is `fd`, if `fd` lies in the target range.
    fn index_of(&self, fd: Fd) -> Option<usize> {
        if (self.first..self.end).contains(&fd) {
            usize::try_from(fd - self.first).ok()
        } else {
            None
        }
    }

    /// Emits a `ClearCloexec` for every source already at its target.
    fn clear_fixed(&mut self) {
        for i in 0..self.sources.len() {
            if !self.pending[i] {
                let fd = self.target(i);
                self.steps.push(Step::ClearCloexec { fd });
            }
        }
    }

    /// Emits the move of `i` if it is pending and nothing still reads its target, then the
    /// move that this unblocks (the one whose target is `i`'s source), and so on.
    fn run_chain(&mut self, mut i: usize) {
        while self.pending[i] && self.readers[i] == 0 {
            self.pending[i] = false;
            let to = self.target(i);
            let fd = self.sources[i];
            let Some(k) = self.index_of(fd) else {
                self.steps.push(Step::Dup2 {
                    from: Source::Fd(fd),
                    to,
                });
                return;
            };
            if let Some(slot) = self.stashed_in[k] {
                self.steps.push(Step::Dup2 {
                    from: Source::Stash(slot),
                    to,
                });
                self.stash_readers[slot] -= 1;
                if self.stash_readers[slot] == 0 {
                    self.steps.push(Step::CloseStash { slot });
                }
                return;
            }
            self.steps.push(Step::Dup2 {
                from: Source::Fd(fd),
                to,
            });
            self.readers[k] -= 1;
            i = k;
        }
    }

    /// Stashes the fd of index `i` (on a cycle, still read by a pending move) in a new slot
    /// and sends its readers there, which makes `i` safe to write.
    fn stash(&mut self, i: usize) {
        debug_assert!(self.readers[i] > 0, "only a blocked target is stashed");
        let slot = self.stash_readers.len();
        self.steps.push(Step::Stash {
            fd: self.target(i),
            slot,
            min: self.end,
        });
        self.stashed_in[i] = Some(slot);
        self.stash_readers.push(self.readers[i]);
        self.readers[i] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Source::{Fd as F, Stash as S};
    use Step::{ClearCloexec, CloseStash, Dup2};

    fn steps(sources: &[Fd], first: Fd) -> Vec<Step> {
        plan(sources, first).unwrap().steps().to_vec()
    }

    fn stash(fd: Fd, slot: usize, min: Fd) -> Step {
        Step::Stash { fd, slot, min }
    }

    #[test]
    fn empty() {
        let p = plan(&[], 3).unwrap();
        assert_eq!(p.steps(), []);
        assert_eq!(p.stash_slots(), 0);
        assert_eq!(p.targets(), 3..3);
    }

    #[test]
    fn identity_only_clears_cloexec() {
        assert_eq!(
            steps(&[3, 4, 5], 3),
            [
                ClearCloexec { fd: 3 },
                ClearCloexec { fd: 4 },
                ClearCloexec { fd: 5 }
            ]
        );
    }

    #[test]
    fn from_above_the_range() {
        assert_eq!(
            steps(&[7, 9, 8], 3),
            [
                Dup2 { from: F(7), to: 3 },
                Dup2 { from: F(9), to: 4 },
                Dup2 { from: F(8), to: 5 }
            ]
        );
    }

    #[test]
    fn far_above_the_range() {
        let p = plan(&[1_000_000, Fd::MAX], 3).unwrap();
        assert_eq!(
            p.steps(),
            [
                Dup2 {
                    from: F(1_000_000),
                    to: 3
                },
                Dup2 {
                    from: F(Fd::MAX),
                    to: 4
                }
            ]
        );
    }

    #[test]
    fn cycle_of_two() {
        assert_eq!(
            steps(&[4, 3], 3),
            [
                stash(3, 0, 5),
                Dup2 { from: F(4), to: 3 },
                Dup2 { from: S(0), to: 4 },
                CloseStash { slot: 0 }
            ]
        );
    }

    #[test]
    fn reversed_range() {
        // 3 ↔ 7 and 4 ↔ 6 are cycles, 5 stays.
        assert_eq!(
            steps(&[7, 6, 5, 4, 3], 3),
            [
                ClearCloexec { fd: 5 },
                stash(3, 0, 8),
                Dup2 { from: F(7), to: 3 },
                Dup2 { from: S(0), to: 7 },
                CloseStash { slot: 0 },
                stash(4, 1, 8),
                Dup2 { from: F(6), to: 4 },
                Dup2 { from: S(1), to: 6 },
                CloseStash { slot: 1 }
            ]
        );
    }

    #[test]
    fn shifted_down_needs_no_stash() {
        // Each target is written after the move that reads it.
        assert_eq!(
            steps(&[4, 5, 6], 3),
            [
                Dup2 { from: F(4), to: 3 },
                Dup2 { from: F(5), to: 4 },
                Dup2 { from: F(6), to: 5 }
            ]
        );
    }

    #[test]
    fn shifted_up_follows_the_chain() {
        // 5 → 6 must come first, then 4 → 5, then 3 → 4.
        assert_eq!(
            steps(&[2, 3, 4, 5], 3),
            [
                Dup2 { from: F(5), to: 6 },
                Dup2 { from: F(4), to: 5 },
                Dup2 { from: F(3), to: 4 },
                Dup2 { from: F(2), to: 3 }
            ]
        );
    }

    #[test]
    fn same_fd_twice() {
        assert_eq!(
            steps(&[8, 8], 3),
            [Dup2 { from: F(8), to: 3 }, Dup2 { from: F(8), to: 4 }]
        );
        // An in-range source read twice is read both times before it is overwritten.
        assert_eq!(
            steps(&[5, 5, 3], 3),
            [
                Dup2 { from: F(5), to: 4 },
                stash(3, 0, 6),
                Dup2 { from: F(5), to: 3 },
                Dup2 { from: S(0), to: 5 },
                CloseStash { slot: 0 }
            ]
        );
    }

    #[test]
    fn in_place_source_also_read_elsewhere() {
        assert_eq!(
            steps(&[4, 4, 4], 3),
            [
                ClearCloexec { fd: 4 },
                Dup2 { from: F(4), to: 3 },
                Dup2 { from: F(4), to: 5 }
            ]
        );
    }

    #[test]
    fn cycle_with_a_branch() {
        // 3 ↔ 4 is a cycle; 5 also reads 3, before 3 is overwritten.
        assert_eq!(
            steps(&[4, 3, 3], 3),
            [
                Dup2 { from: F(3), to: 5 },
                stash(3, 0, 6),
                Dup2 { from: F(4), to: 3 },
                Dup2 { from: S(0), to: 4 },
                CloseStash { slot: 0 }
            ]
        );
    }

    #[test]
    fn stdio_sources() {
        assert_eq!(
            steps(&[0, 1, 2], 3),
            [
                Dup2 { from: F(0), to: 3 },
                Dup2 { from: F(1), to: 4 },
                Dup2 { from: F(2), to: 5 }
            ]
        );
        // Targets over stdio are allowed too (a caller's choice): 1 → 0 before 2 → 1.
        assert_eq!(
            steps(&[1, 2], 0),
            [Dup2 { from: F(1), to: 0 }, Dup2 { from: F(2), to: 1 }]
        );
    }

    #[test]
    fn steps_and_stashes_are_counted() {
        let p = plan(&[4, 3, 6, 5, 9], 3).unwrap();
        assert_eq!(p.stash_slots(), 2);
        assert_eq!(p.steps().len(), 5 + 2 * 2);
        assert_eq!(p.targets(), 3..8);
    }

    #[test]
    fn errors() {
        assert_eq!(plan(&[3], -1), Err(PlanError::NegativeFirst { first: -1 }));
        assert_eq!(
            plan(&[7, -2], 3),
            Err(PlanError::NegativeSource { index: 1, fd: -2 })
        );
        assert_eq!(
            plan(&[7], Fd::MAX),
            Err(PlanError::RangeTooHigh {
                first: Fd::MAX,
                len: 1
            })
        );
        assert_eq!(
            plan(&[7], MAX_TARGET_END),
            Err(PlanError::RangeTooHigh {
                first: MAX_TARGET_END,
                len: 1
            })
        );
        assert!(plan(&[7], MAX_TARGET_END - 1).is_ok());
        assert!(plan(&[], MAX_TARGET_END).is_ok());
    }

    #[test]
    fn error_messages_and_io_errors() {
        let e = PlanError::NegativeSource { index: 1, fd: -2 };
        assert_eq!(e.to_string(), "source #1 is fd -2, which is negative");
        assert_eq!(
            PlanError::NegativeFirst { first: -1 }.to_string(),
            "the first target fd is -1, which is negative"
        );
        assert_eq!(
            PlanError::RangeTooHigh { first: 3, len: 9 }.to_string(),
            "9 fds from fd 3 on would end above fd 1048576"
        );
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    }
}
