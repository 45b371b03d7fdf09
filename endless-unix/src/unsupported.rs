//! What endless offers where it does not run: every target that is not Unix (Windows,
//! WASI, …). The crates build there, so that an application that also runs on Unix can
//! depend on them unconditionally, and [`Builder::start`] says at run time, with a typed
//! error, that this platform is not supported. Nothing else of the Unix API exists here:
//! code that takes listeners from endless is written for Unix (`#[cfg(unix)]`), and binds
//! its own listeners elsewhere.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::marker::PhantomData;

/// Why [`Builder::start`] failed. On this platform: always [`Self::UnsupportedPlatform`].
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// endless needs a Unix system (re-exec with inherited file descriptors, signals);
    /// this is not one.
    UnsupportedPlatform,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedPlatform => f.write_str(
                "endless supports Unix systems only (Linux is tested, macOS and FreeBSD are \
                 type-checked); on this platform, serve without it",
            ),
        }
    }
}

impl std::error::Error for StartError {}

impl From<StartError> for io::Error {
    fn from(e: StartError) -> Self {
        Self::new(io::ErrorKind::Unsupported, e)
    }
}

/// Configures and starts [`Endless`]: here, [`Builder::start`] always fails.
pub struct Builder<N>(PhantomData<fn() -> N>);

impl<N> fmt::Debug for Builder<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Builder(unsupported platform)")
    }
}

impl<N> Default for Builder<N> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<N> Builder<N> {
    /// Fails with [`StartError::UnsupportedPlatform`]: endless does not run on this
    /// platform.
    pub fn start(self) -> Result<Endless<N>, StartError> {
        Err(StartError::UnsupportedPlatform)
    }
}

/// A process's handle on zero-downtime restarts. None can exist on this platform:
/// [`Endless::start`] always fails.
pub struct Endless<N> {
    never: Infallible,
    _runtime: PhantomData<fn() -> N>,
}

impl<N> fmt::Debug for Endless<N> {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.never {}
    }
}

impl<N> Endless<N> {
    /// A [`Builder`], whose [`start`](Builder::start) fails on this platform.
    pub fn builder() -> Builder<N> {
        Builder::default()
    }

    /// Fails with [`StartError::UnsupportedPlatform`]: endless does not run on this
    /// platform.
    pub fn start() -> Result<Self, StartError> {
        Self::builder().start()
    }
}
