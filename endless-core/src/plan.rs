//! The fd renumbering plan: which steps put the inherited descriptors at 3, 4, 5, … in the
//! child.
//!
//! The parent holds the descriptors it hands over at arbitrary numbers (`sources`); the child
//! must find `sources[i]` at `first + i` (`first` is normally [`FIRST_INHERITED_FD`]). The
//! child is started with `posix_spawn`, and the renumbering is its list of *file actions*:
//! `dup2` and `close`, which the C library (or the kernel) runs in the child between its
//! creation and `exec`, with none of our code there. So every decision is made here, in the
//! parent, by the pure function [`plan`], and the steps name every fd by its number.
//!
//! # The problem
//!
//! Renumbering is a *parallel move*: every target `first + i` receives `sources[i]`, but a
//! source may itself sit inside the target range `[first, first + n)`, in any order, and the
//! same source may feed several targets. A naive loop of `dup2(sources[i], first + i)`
//! clobbers a source that a later step still reads (`3 → 4, 4 → 3` ends with the same socket
//! at both numbers). Two more traps:
//!
//! - The targets must end up without `FD_CLOEXEC`, or `exec` closes them. `dup2` clears the
//!   flag on the new fd, but `dup2(fd, fd)` does nothing at all, and a spawn file action
//!   `adddup2(fd, fd)` clears the flag on some systems only (POSIX asks for it since 2024;
//!   older glibc, macOS and the BSDs differ). So a source that already sits at its target is
//!   moved away and back, through a *spare* fd.
//! - Breaking a cycle of moves needs a temporary. File actions cannot ask the kernel for "the
//!   lowest free fd" (there is no `F_DUPFD` action), so the temporary is the same spare: a
//!   number the plan picks, the lowest at or above the target range that is no source. In the
//!   child, whatever the parent had at that number is close-on-exec or of no use to the child
//!   (only stdio and the targets survive `exec`), so overwriting it there is harmless; the
//!   last step closes it.
//!
//! # The algorithm
//!
//! Index `i` is *fixed* when `sources[i] == first + i` (two moves through the spare),
//! otherwise it needs one [`Step::Dup2`] into `first + i`, which may run once no pending move
//! still reads the old `first + i`. Moves are emitted as soon as they are safe, following
//! chains (writing `first + i` may free the target its source sits on); what is left when
//! nothing is safe is a set of disjoint cycles of in-range sources, and each cycle is broken
//! by copying one of its fds to the spare, which its one remaining reader then reads. It runs
//! in `O(n log n)` time and `O(n)` memory.
//!
//! # Guarantees
//!
//! For `sources` of length `n`, when the steps of `plan(sources, first)` run in order in a
//! child whose fd table is a copy of the parent's:
//!
//! - fd `first + i` refers to the open file description that `sources[i]` referred to, and
//!   has `FD_CLOEXEC` clear, for every `i`;
//! - no fd outside `[first, first + n)` is written or closed, except the
//!   [spare](Plan::spare), which is no source and is closed by the last step;
//! - no step reads an fd after a step has written it with something else: a source is read
//!   either from its own fd, still untouched, or from the spare it was copied to;
//! - no [`Step::Dup2`] has `from == to`;
//! - the spare is used only for a source already in place or for a cycle of sources inside
//!   the target range (such as `3 → 4, 4 → 3`), one copy per cycle;
//! - there are exactly `n + fixed + cycles` steps, plus one [`Step::Close`] when the spare
//!   is used, so never more than `2n + 1`.
//!
//! The plan does not know which fds are open in the child: if a source is not open, its
//! `dup2` fails with `EBADF` (and so does one to a spare at or above the process's fd limit),
//! and the spawn reports it.
//!
//! # Running a plan
//!
//! Each step is one spawn file action (or, after `fork`, one call), in order:
//!
//! | Step | File action | Call |
//! |------|-------------|------|
//! | [`Step::Dup2`] `{ from, to }` | `posix_spawn_file_actions_adddup2(from, to)` | `dup2(from, to)` |
//! | [`Step::Close`] `{ fd }` | `posix_spawn_file_actions_addclose(fd)` | `close(fd)` |
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

/// One step of a [`Plan`]: one spawn file action (or one system call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// `dup2(from, to)`: `to` now refers to `from`'s file and has `FD_CLOEXEC` clear.
    ///
    /// `from` never equals `to`.
    Dup2 {
        /// The descriptor to copy: a source, or the spare.
        from: Fd,
        /// A target fd, in `[first, first + n)`, or the spare.
        to: Fd,
    },
    /// `close(fd)`: the spare, once every step that reads it has run.
    Close {
        /// The spare.
        fd: Fd,
    },
}

/// The steps that put `sources[i]` at `first + i`; made by [`plan`].
///
/// See the [module docs](self) for what a plan guarantees and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    steps: Vec<Step>,
    spare: Option<Fd>,
    targets: Range<Fd>,
}

impl Plan {
    /// The steps, to be run in this order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The spare fd the steps write and close outside the target range, if they need one:
    /// the lowest fd at or above the range that is no source.
    pub fn spare(&self) -> Option<Fd> {
        self.spare
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
/// Two listeners at 4 and 3 that must swap places: one is kept in the spare, fd 5, first.
///
/// ```
/// use endless_core::plan::{Step, plan};
///
/// let swap = plan(&[4, 3], 3)?;
/// assert_eq!(swap.targets(), 3..5);
/// assert_eq!(swap.spare(), Some(5));
/// assert_eq!(
///     swap.steps(),
///     [
///         Step::Dup2 { from: 3, to: 5 },
///         Step::Dup2 { from: 4, to: 3 },
///         Step::Dup2 { from: 5, to: 4 },
///         Step::Close { fd: 5 },
///     ]
/// );
///
/// // Sources outside the range are read where they are; one already in place goes to the
/// // spare and back, which clears its close-on-exec flag on every system. The spare is the
/// // lowest fd above the range (3..6) that is no source.
/// let mixed = plan(&[9, 4, 9], 3)?;
/// assert_eq!(mixed.spare(), Some(6));
/// assert_eq!(
///     mixed.steps(),
///     [
///         Step::Dup2 { from: 4, to: 6 },
///         Step::Dup2 { from: 6, to: 4 },
///         Step::Dup2 { from: 9, to: 3 },
///         Step::Dup2 { from: 9, to: 5 },
///         Step::Close { fd: 6 },
///     ]
/// );
///
/// // Nothing in place and no cycle: no spare.
/// assert_eq!(plan(&[7, 8], 3)?.spare(), None);
/// # Ok::<(), endless_core::plan::PlanError>(())
/// ```
pub fn plan(sources: &[Fd], first: Fd) -> Result<Plan, PlanError> {
    let slots: Vec<Option<Fd>> = sources.iter().copied().map(Some).collect();
    plan_partial(&slots, first)
}

/// As [`plan`], for a target range where some fds are left as they are: `sources[i]` is
/// `None` for a target `first + i` that no step writes (and that other steps may read as
/// a source). Spawning uses it for stdio: `plan_partial(&[None, Some(pipe), None], 0)`
/// redirects stdout only.
///
/// # Errors
///
/// As [`plan`].
///
/// # Examples
///
/// ```
/// use endless_core::plan::{Step, plan_partial};
///
/// // Stdout to the pipe at fd 4, stdin and stderr untouched.
/// let p = plan_partial(&[None, Some(4), None], 0)?;
/// assert_eq!(p.steps(), [Step::Dup2 { from: 4, to: 1 }]);
/// # Ok::<(), endless_core::plan::PlanError>(())
/// ```
pub fn plan_partial(sources: &[Option<Fd>], first: Fd) -> Result<Plan, PlanError> {
    if first < 0 {
        return Err(PlanError::NegativeFirst { first });
    }
    if let Some((index, fd)) = sources
        .iter()
        .enumerate()
        .find_map(|(i, &fd)| fd.filter(|&fd| fd < 0).map(|fd| (i, fd)))
    {
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
    // Whatever is still pending is a union of cycles: break each one through the spare.
    for i in 0..len {
        if planner.pending[i] {
            planner.stash(i);
            planner.run_chain(i);
        }
    }
    debug_assert!(planner.pending.iter().all(|p| !p));
    if planner.spare_used {
        planner.steps.push(Step::Close { fd: planner.spare });
    }
    Ok(Plan {
        steps: planner.steps,
        spare: planner.spare_used.then_some(planner.spare),
        targets: first..end,
    })
}

/// The working state of [`plan`]. Index `i` stands for target fd `first + i`.
struct Planner<'a> {
    sources: &'a [Option<Fd>],
    first: Fd,
    end: Fd,
    /// Whether index `i` still needs its `dup2`.
    pending: Vec<bool>,
    /// How many pending moves read the fd `first + i` directly.
    readers: Vec<usize>,
    /// Whether the original of fd `first + i` was copied to the spare.
    stashed: Vec<bool>,
    /// The lowest fd at or above `end` that is no source.
    spare: Fd,
    spare_used: bool,
    steps: Vec<Step>,
}

impl<'a> Planner<'a> {
    fn new(sources: &'a [Option<Fd>], first: Fd, end: Fd) -> Self {
        let len = sources.len();
        let mut above: Vec<Fd> = sources
            .iter()
            .flatten()
            .copied()
            .filter(|&fd| fd >= end)
            .collect();
        above.sort_unstable();
        above.dedup();
        // `above` holds at most `len` numbers, so one of `end..=end + len` is free of them.
        let mut spare = end;
        for fd in above {
            if fd == spare {
                spare += 1;
            } else if fd > spare {
                break;
            }
        }
        let mut planner = Self {
            sources,
            first,
            end,
            pending: vec![false; len],
            readers: vec![0; len],
            stashed: vec![false; len],
            spare,
            spare_used: false,
            steps: Vec::with_capacity(len + 1),
        };
        for (i, &fd) in sources.iter().enumerate() {
            if let Some(fd) = fd
                && fd != planner.target(i)
            {
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

    /// Moves every source already at its target to the spare and back: the only `dup2`
    /// that clears `FD_CLOEXEC` everywhere is one between two different numbers.
    fn clear_fixed(&mut self) {
        for i in 0..self.sources.len() {
            if self.sources[i] == Some(self.target(i)) {
                let fd = self.target(i);
                self.steps.push(Step::Dup2 {
                    from: fd,
                    to: self.spare,
                });
                self.steps.push(Step::Dup2 {
                    from: self.spare,
                    to: fd,
                });
                self.spare_used = true;
            }
        }
    }

    /// Emits the move of `i` if it is pending and nothing still reads its target, then the
    /// move that this unblocks (the one whose target is `i`'s source), and so on.
    fn run_chain(&mut self, mut i: usize) {
        while self.pending[i] && self.readers[i] == 0 {
            self.pending[i] = false;
            let to = self.target(i);
            let Some(fd) = self.sources[i] else {
                return; // never pending
            };
            let Some(k) = self.index_of(fd) else {
                self.steps.push(Step::Dup2 { from: fd, to });
                return;
            };
            if self.stashed[k] {
                self.steps.push(Step::Dup2 {
                    from: self.spare,
                    to,
                });
                return;
            }
            self.steps.push(Step::Dup2 { from: fd, to });
            self.readers[k] -= 1;
            i = k;
        }
    }

    /// Copies the fd of index `i` (on a cycle, still read by its one pending move) to the
    /// spare and sends its reader there, which makes `i` safe to write. The spare's previous
    /// content is read by no pending move: a cycle is finished before the next is broken.
    fn stash(&mut self, i: usize) {
        debug_assert_eq!(self.readers[i], 1, "only a cycle is broken");
        self.steps.push(Step::Dup2 {
            from: self.target(i),
            to: self.spare,
        });
        self.spare_used = true;
        self.stashed[i] = true;
        self.readers[i] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Step::{Close, Dup2};

    fn steps(sources: &[Fd], first: Fd) -> Vec<Step> {
        plan(sources, first).unwrap().steps().to_vec()
    }

    #[test]
    fn empty() {
        let p = plan(&[], 3).unwrap();
        assert_eq!(p.steps(), []);
        assert_eq!(p.spare(), None);
        assert_eq!(p.targets(), 3..3);
    }

    #[test]
    fn identity_goes_through_the_spare() {
        assert_eq!(
            steps(&[3, 4], 3),
            [
                Dup2 { from: 3, to: 5 },
                Dup2 { from: 5, to: 3 },
                Dup2 { from: 4, to: 5 },
                Dup2 { from: 5, to: 4 },
                Close { fd: 5 }
            ]
        );
    }

    #[test]
    fn from_above_the_range() {
        let p = plan(&[7, 9, 8], 3).unwrap();
        assert_eq!(
            p.steps(),
            [
                Dup2 { from: 7, to: 3 },
                Dup2 { from: 9, to: 4 },
                Dup2 { from: 8, to: 5 }
            ]
        );
        assert_eq!(p.spare(), None);
    }

    #[test]
    fn far_above_the_range() {
        assert_eq!(
            steps(&[1_000_000, Fd::MAX], 3),
            [
                Dup2 {
                    from: 1_000_000,
                    to: 3
                },
                Dup2 {
                    from: Fd::MAX,
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
                Dup2 { from: 3, to: 5 },
                Dup2 { from: 4, to: 3 },
                Dup2 { from: 5, to: 4 },
                Close { fd: 5 }
            ]
        );
    }

    #[test]
    fn the_spare_is_no_source() {
        // 5 and 6 are sources above the range 3..5: the spare is 7.
        let p = plan(&[4, 3, 5, 6], 3).unwrap();
        assert_eq!(p.targets(), 3..7);
        assert_eq!(p.spare(), Some(7));
        let p = plan(&[4, 3, 6, 8, 7], 3).unwrap();
        assert_eq!(p.spare(), Some(9));
        let p = plan(&[4, 3, 9, 9], 3).unwrap();
        assert_eq!(p.spare(), Some(7));
    }

    #[test]
    fn reversed_range() {
        // 3 ↔ 7 and 4 ↔ 6 are cycles, 5 stays; one spare serves all three.
        assert_eq!(
            steps(&[7, 6, 5, 4, 3], 3),
            [
                Dup2 { from: 5, to: 8 },
                Dup2 { from: 8, to: 5 },
                Dup2 { from: 3, to: 8 },
                Dup2 { from: 7, to: 3 },
                Dup2 { from: 8, to: 7 },
                Dup2 { from: 4, to: 8 },
                Dup2 { from: 6, to: 4 },
                Dup2 { from: 8, to: 6 },
                Close { fd: 8 }
            ]
        );
    }

    #[test]
    fn shifted_down_needs_no_spare() {
        // Each target is written after the move that reads it.
        assert_eq!(
            steps(&[4, 5, 6], 3),
            [
                Dup2 { from: 4, to: 3 },
                Dup2 { from: 5, to: 4 },
                Dup2 { from: 6, to: 5 }
            ]
        );
    }

    #[test]
    fn shifted_up_follows_the_chain() {
        // 5 → 6 must come first, then 4 → 5, then 3 → 4.
        assert_eq!(
            steps(&[2, 3, 4, 5], 3),
            [
                Dup2 { from: 5, to: 6 },
                Dup2 { from: 4, to: 5 },
                Dup2 { from: 3, to: 4 },
                Dup2 { from: 2, to: 3 }
            ]
        );
    }

    #[test]
    fn same_fd_twice() {
        assert_eq!(
            steps(&[8, 8], 3),
            [Dup2 { from: 8, to: 3 }, Dup2 { from: 8, to: 4 }]
        );
        // An in-range source read twice is read both times before it is overwritten.
        assert_eq!(
            steps(&[5, 5, 3], 3),
            [
                Dup2 { from: 5, to: 4 },
                Dup2 { from: 3, to: 6 },
                Dup2 { from: 5, to: 3 },
                Dup2 { from: 6, to: 5 },
                Close { fd: 6 }
            ]
        );
    }

    #[test]
    fn in_place_source_also_read_elsewhere() {
        assert_eq!(
            steps(&[4, 4, 4], 3),
            [
                Dup2 { from: 4, to: 6 },
                Dup2 { from: 6, to: 4 },
                Dup2 { from: 4, to: 3 },
                Dup2 { from: 4, to: 5 },
                Close { fd: 6 }
            ]
        );
    }

    #[test]
    fn cycle_with_a_branch() {
        // 3 ↔ 4 is a cycle; 5 also reads 3, before 3 is overwritten.
        assert_eq!(
            steps(&[4, 3, 3], 3),
            [
                Dup2 { from: 3, to: 5 },
                Dup2 { from: 3, to: 6 },
                Dup2 { from: 4, to: 3 },
                Dup2 { from: 6, to: 4 },
                Close { fd: 6 }
            ]
        );
    }

    #[test]
    fn stdio_sources() {
        assert_eq!(
            steps(&[0, 1, 2], 3),
            [
                Dup2 { from: 0, to: 3 },
                Dup2 { from: 1, to: 4 },
                Dup2 { from: 2, to: 5 }
            ]
        );
        // Targets over stdio are allowed too (a caller's choice): 1 → 0 before 2 → 1.
        assert_eq!(
            steps(&[1, 2], 0),
            [Dup2 { from: 1, to: 0 }, Dup2 { from: 2, to: 1 }]
        );
    }

    #[test]
    fn partial_leaves_the_unnamed_targets_alone() {
        // Stdin stays; stdout and stderr swap; a source read at fd 0 is read in place.
        let p = plan_partial(&[None, Some(2), Some(1), Some(0)], 0).unwrap();
        assert_eq!(
            p.steps(),
            [
                Dup2 { from: 0, to: 3 },
                Dup2 { from: 1, to: 4 },
                Dup2 { from: 2, to: 1 },
                Dup2 { from: 4, to: 2 },
                Close { fd: 4 }
            ]
        );
        assert_eq!(plan_partial(&[None, None], 0).unwrap().steps(), []);
        assert_eq!(
            plan_partial(&[None, Some(-1)], 0),
            Err(PlanError::NegativeSource { index: 1, fd: -1 })
        );
    }

    #[test]
    fn steps_are_counted() {
        // Two cycles (3 ↔ 4, 5 ↔ 6), one source from above: 5 moves, 2 copies, 1 close.
        let p = plan(&[4, 3, 6, 5, 9], 3).unwrap();
        assert_eq!(p.steps().len(), 5 + 2 + 1);
        assert_eq!(p.targets(), 3..8);
        assert_eq!(p.spare(), Some(8));
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
