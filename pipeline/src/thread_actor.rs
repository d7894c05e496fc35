//! A dedicated thread that owns some state and runs jobs on it, one at a time: the
//! shape of the model thread (weights stay on the thread that uses them, inference off
//! the async runtime) and of the database thread (blocking I/O off the runtime).

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// The thread has stopped (its state could not be built, or a job panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} thread has stopped")]
pub(crate) struct Gone(pub(crate) &'static str);

/// Why [`ThreadActor::start`] failed.
#[derive(Debug)]
pub(crate) enum StartError<E> {
    /// The OS refused a new thread.
    Spawn(std::io::Error),
    /// Building the state failed on the thread.
    Init(E),
    /// Building the state panicked, with this message.
    Panicked(String),
}

/// Handle to the thread. Dropping it stops the thread after the jobs already queued.
pub(crate) struct ThreadActor<S> {
    name: &'static str,
    jobs: Option<mpsc::SyncSender<Job<S>>>,
    thread: Option<JoinHandle<()>>,
}

impl<S: 'static> ThreadActor<S> {
    /// Starts the thread named `name`, builds the state there with `init` and waits
    /// until that is done. At most `capacity` jobs wait in the queue; callers keep at most
    /// that many outstanding (the model: one batch, capacity 1), so queueing never blocks.
    pub(crate) async fn start<T, E>(
        name: &'static str,
        capacity: usize,
        init: impl FnOnce() -> Result<(S, T), E> + Send + 'static,
    ) -> Result<(Self, T), StartError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job<S>>(capacity);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<T, E>>();
        let thread = std::thread::Builder::new()
            .name(format!("vigil-{name}"))
            .spawn(move || {
                let mut state = match init() {
                    // A failed send means `start` stopped waiting: nobody to tell.
                    Ok((state, ready)) => {
                        ready_tx.send(Ok(ready)).ok();
                        state
                    }
                    Err(e) => {
                        ready_tx.send(Err(e)).ok();
                        return;
                    }
                };
                while let Ok(job) = jobs_rx.recv() {
                    job(&mut state);
                }
                tracing::debug!(thread = name, "thread stopping");
            })
            .map_err(StartError::Spawn)?;
        match ready_rx.await {
            Ok(Ok(ready)) => Ok((ThreadActor { name, jobs: Some(jobs_tx), thread: Some(thread) }, ready)),
            Ok(Err(e)) => {
                // The thread returned right after sending the error: nothing to report.
                thread.join().ok();
                Err(StartError::Init(e))
            }
            Err(_) => Err(StartError::Panicked(thread.join().err().map(panic_message).unwrap_or_default())),
        }
    }

    /// Queues `job`; the receiver yields its result (or an error if the thread died).
    pub(crate) fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<oneshot::Receiver<R>, Gone> {
        let (reply, rx) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(Gone(self.name))?;
        jobs.send(Box::new(move |state: &mut S| {
            // A failed send means the caller stopped waiting for the result.
            reply.send(job(state)).ok();
        }))
        .map_err(|_| Gone(self.name))?;
        Ok(rx)
    }

    /// Runs `job` and waits for its result.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, Gone> {
        self.call(job)?.await.map_err(|_| Gone(self.name))
    }

    /// Runs `job` and blocks the calling thread until it is done: for synchronous
    /// callbacks (librdkafka's rebalance callback). On a multi-threaded runtime the wait
    /// happens in `block_in_place`, so the runtime's other tasks keep moving.
    pub(crate) fn run_blocking<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, Gone> {
        // A std channel: its `recv` may block inside an async context, a oneshot's may not.
        let (reply, rx) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or(Gone(self.name))?;
        jobs.send(Box::new(move |state: &mut S| {
            reply.send(job(state)).ok();
        }))
        .map_err(|_| Gone(self.name))?;
        let wait = || rx.recv().map_err(|_| Gone(self.name));
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl<S> Drop for ThreadActor<S> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!(thread = self.name, "thread had panicked");
            }
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_jobs_on_its_state_in_order() {
        let (actor, ready) = ThreadActor::start("test", 2, || Ok::<_, ()>((vec![1], "ready"))).await.unwrap();
        assert_eq!(ready, "ready");
        let first = actor.call(|v: &mut Vec<i32>| v.push(2)).unwrap();
        assert_eq!(actor.run(|v: &mut Vec<i32>| v.clone()).await.unwrap(), [1, 2]);
        first.await.unwrap();
        assert_eq!(actor.run_blocking(|v: &mut Vec<i32>| v.len()).unwrap(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_errors_and_panics_are_reported() {
        let err = ThreadActor::<()>::start("test", 1, || Err::<((), ()), _>("no weights")).await.err().unwrap();
        assert!(matches!(err, StartError::Init("no weights")));
        let err =
            ThreadActor::<()>::start("test", 1, || -> Result<((), ()), ()> { panic!("boom") }).await.err().unwrap();
        assert!(matches!(err, StartError::Panicked(ref m) if m == "boom"), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_stops_the_thread() {
        let (actor, ()) = ThreadActor::start("test", 1, || Ok::<_, ()>((0u8, ()))).await.unwrap();
        assert!(actor.run(|_: &mut u8| -> () { panic!("job failed") }).await.is_err());
        // The thread is gone: later calls fail instead of hanging.
        let later = actor.call(|_: &mut u8| ());
        match later {
            Err(gone) => assert_eq!(gone, Gone("test")),
            Ok(rx) => assert!(rx.await.is_err()),
        }
    }
}
