//! Evaluation: Rego compiled once at load and shared by every request.
//!
//! The policy is compiled to a regorus `CompiledPolicy` and, where the RVM supports it, to an
//! RVM `Program`. Each worker thread keeps its own VM loaded with the current program, so a
//! request only sets the input and executes — no engine per request, no lock around one. The
//! interpreter evaluates policies the RVM cannot compile and serves as the test oracle.

mod decision;
mod input;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{CompiledPolicy, Engine};

pub use crate::chain::View;
pub use decision::{CredentialGrant, Decision, Effect};
pub(crate) use input::word;
pub use input::{
    chain_value, mark_listing, set_definition, timestamp, ChainEntry, Input, RequestView,
    CREDENTIAL_HEADERS,
};
/// The policy value type inputs and results are made of (regorus's).
pub use regorus::Value;

use crate::config::PolicySource;

/// toolgate's Rego helper library (`data.toolgate.lib`), loaded beside every policy.
pub const LIB: &str = include_str!("../rego/lib.rego");
/// The name the helper library is loaded under (it appears in error locations).
pub const LIB_NAME: &str = "toolgate:lib.rego";

/// Wall-clock budget for one evaluation; beyond it the request is denied.
pub const TIME_LIMIT: Duration = Duration::from_millis(100);
/// Instruction budget for one RVM evaluation.
pub const INSTRUCTION_LIMIT: usize = 2_000_000;

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A policy that failed to compile: the message names the file and line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// Which evaluator produced a result (the RVM, or the interpreter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluator {
    Rvm,
    Interpreter,
}

/// A compiled policy, immutable and shared across threads.
#[derive(Debug)]
pub struct Policy {
    compiled: CompiledPolicy,
    program: Option<Arc<Program>>,
    /// Why the RVM could not take this policy, when it could not.
    rvm_unsupported: Option<String>,
    data: Value,
    query: String,
    generation: u64,
    revision: String,
}

/// VMs a worker thread keeps loaded: the live policy's and the shadow's, and room for the
/// versions a reload replaces while requests still finish on them. The least recently used
/// goes first.
const VMS_PER_THREAD: usize = 4;

/// One thread's loaded VMs: (policy generation, last use, VM).
#[derive(Default)]
struct Vms {
    loaded: Vec<(u64, u64, RegoVM)>,
    clock: u64,
}

thread_local! {
    static VMS: RefCell<Vms> = RefCell::new(Vms::default());
}

impl Policy {
    /// Compile the modules and data of `source` for its query.
    pub fn compile(source: &PolicySource) -> Result<Policy, PolicyError> {
        set_interpreter_limits();
        let data = Value::from(source.data.clone());
        let mut engine = Engine::new();
        engine
            .add_data(data.clone())
            .map_err(|e| PolicyError(format!("policy data: {e}")))?;
        let lib = (LIB_NAME.to_string(), LIB.to_string());
        for (name, text) in source.modules.iter().chain(std::iter::once(&lib)) {
            engine
                .add_policy(name.clone(), text.clone())
                .map_err(|e| PolicyError(condense(&e.to_string())))?;
        }
        // OPA's default: a builtin error (to_number("x")) makes its expression undefined, as
        // the RVM does; `not` and defaults then decide, rather than the whole query failing.
        engine.set_strict_builtin_errors(false);
        let entry: regorus::Rc<str> = source.query.as_str().into();
        let compiled = engine.compile_with_entrypoint(&entry).map_err(|e| {
            PolicyError(format!(
                "cannot compile for query {}: {}",
                source.query,
                condense(&e.to_string())
            ))
        })?;
        let (program, rvm_unsupported) =
            match Compiler::compile_from_policy(&compiled, &[source.query.as_str()]) {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e.to_string())),
            };
        Ok(Policy {
            compiled,
            program,
            rvm_unsupported,
            data,
            query: source.query.clone(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            revision: revision(source),
        })
    }

    /// A short hash of the policy modules and data: the revision named in decision logs.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The evaluator used on the request path.
    pub fn evaluator(&self) -> Evaluator {
        if self.program.is_some() {
            Evaluator::Rvm
        } else {
            Evaluator::Interpreter
        }
    }

    /// Why the RVM does not run this policy, if it does not.
    pub fn rvm_unsupported(&self) -> Option<&str> {
        self.rvm_unsupported.as_deref()
    }

    /// Decide on `input`. Errors, undefined results and exceeded limits deny.
    pub fn decide(&self, input: Value) -> Decision {
        Decision::from_result(self.evaluate(input, self.evaluator()))
    }

    /// Evaluate with a chosen evaluator and return the raw query result.
    pub fn evaluate(&self, input: Value, evaluator: Evaluator) -> Result<Value, String> {
        match (evaluator, &self.program) {
            (Evaluator::Rvm, Some(program)) => self.evaluate_rvm(program, input),
            (Evaluator::Rvm, None) => Err(format!(
                "the RVM cannot run this policy: {}",
                self.rvm_unsupported.as_deref().unwrap_or("no program")
            )),
            (Evaluator::Interpreter, _) => self
                .compiled
                .eval_with_input(input)
                .map_err(|e| e.to_string()),
        }
    }

    fn evaluate_rvm(&self, program: &Arc<Program>, input: Value) -> Result<Value, String> {
        VMS.with(|cell| {
            let mut vms = cell
                .try_borrow_mut()
                .map_err(|_| "policy evaluation re-entered".to_string())?;
            let vms = &mut *vms;
            vms.clock += 1;
            let now = vms.clock;
            let index = match vms
                .loaded
                .iter()
                .position(|(g, _, _)| *g == self.generation)
            {
                Some(i) => i,
                None => {
                    let mut vm = RegoVM::new();
                    vm.load_program(program.clone());
                    vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
                    vm.set_max_instructions(INSTRUCTION_LIMIT);
                    vm.set_execution_timer_config(Some(timer()));
                    if vms.loaded.len() >= VMS_PER_THREAD {
                        let oldest = vms
                            .loaded
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (_, used, _))| *used)
                            .map(|(i, _)| i);
                        if let Some(i) = oldest {
                            vms.loaded.swap_remove(i);
                        }
                    }
                    vms.loaded.push((self.generation, now, vm));
                    vms.loaded.len() - 1
                }
            };
            let Some((_, used, vm)) = vms.loaded.get_mut(index) else {
                return Err("no VM".to_string());
            };
            *used = now;
            vm.set_input(input);
            let result = vm.execute().map_err(|e| e.to_string());
            // Drop the input now rather than holding it until the next request.
            vm.set_input(Value::Null);
            result
        })
    }

    /// The query this policy answers.
    pub fn query(&self) -> &str {
        &self.query
    }
}

/// regorus reports `\n--> file:line:col\n  |\n…\nerror: message`: make it one line,
/// `file:line:col: message`.
fn condense(message: &str) -> String {
    let location = message
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "));
    let error = message
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "));
    match (location, error) {
        (Some(at), Some(e)) => format!("{}: {}", at.trim(), e.trim()),
        _ => message.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Instructions between two reads of the clock: an instruction takes well under a
/// microsecond, so the limit is overshot by at most about a millisecond, and the clock is not
/// read on every short evaluation (reading it every 64 instructions was 2% of an evaluation).
const TIMER_CHECK_INTERVAL: u32 = 1024;

fn timer() -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: TIME_LIMIT,
        check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    }
}

/// The interpreter reads its time limit from a process-wide fallback.
fn set_interpreter_limits() {
    regorus::utils::limits::set_fallback_execution_timer_config(Some(timer()));
}

/// The revision a policy compiled from `source` has.
pub fn revision(source: &PolicySource) -> String {
    // FNV-1a: stable across builds and platforms, enough to tell revisions apart in logs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, text) in &source.modules {
        eat(name.as_bytes());
        eat(&[0]);
        eat(text.as_bytes());
        eat(&[0]);
    }
    eat(LIB.as_bytes());
    eat(source.data.to_string().as_bytes());
    eat(source.query.as_bytes());
    format!("{h:016x}")
}
