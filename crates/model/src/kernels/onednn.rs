//! oneDNN 2.x (`libdnnl.so.2`), loaded at run time, for matrix products in bf16 on the CPU's
//! matrix units (AMX) or bf16 vector instructions (AVX512-BF16).
//!
//! Loaded, not linked: a build needs no oneDNN, and a machine without it (or whose CPU has no
//! bf16 unit) keeps the `f32` products. Only what a linear layer needs is bound: a matmul
//! primitive (`bf16 x bf16 + f32 bias -> f32`), a reorder that packs the weights once into the
//! layout the primitive reads, and memory objects around buffers this crate owns. The struct
//! sizes below are oneDNN 2.x's, fixed within its soname.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::ptr::null_mut;
use std::sync::{Arc, Mutex, OnceLock};

use libloading::Library;

type Status = c_int;
type Handle = *mut c_void;

const SUCCESS: Status = 0;
const DATA_TYPE_BF16: c_int = 2;
const DATA_TYPE_F32: c_int = 3;
const FORMAT_TAG_ANY: c_int = 1;
const FORMAT_TAG_AB: c_int = 3;
const ENGINE_CPU: c_int = 1;
const STREAM_DEFAULT_FLAGS: c_uint = 1;
const SCRATCHPAD_MODE_USER: c_int = 1;
const QUERY_IMPL_INFO_STR: c_int = 8;
const QUERY_WEIGHTS_MD: c_int = 131;
const QUERY_SCRATCHPAD_MD: c_int = 136;
const ARG_SRC: c_int = 1;
const ARG_DST: c_int = 17;
const ARG_WEIGHTS: c_int = 33;
const ARG_BIAS: c_int = 41;
const ARG_SCRATCHPAD: c_int = 80;
const ARG_FROM: c_int = 1;
const ARG_TO: c_int = 17;
const CPU_RUNTIME_OMP: c_uint = 2;
/// `DNNL_MEMORY_ALLOCATE`: the memory object allocates its own buffer.
const MEMORY_ALLOCATE: *mut c_void = usize::MAX as *mut c_void;

/// `dnnl_memory_desc_t` (696 bytes in 2.x), opaque here: oneDNN fills and reads it.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct MemoryDesc([u8; 696]);

/// `dnnl_matmul_desc_t` (2,800 bytes in 2.x).
#[repr(C, align(8))]
struct MatmulDesc([u8; 2800]);

#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Handle,
}

#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: c_uint,
    gpu_runtime: c_uint,
}

/// The library's entry points this module calls.
struct Api {
    version: unsafe extern "C" fn() -> *const Version,
    engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status,
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, c_uint) -> Status,
    memory_desc_init_by_tag:
        unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, c_int) -> Status,
    memory_desc_get_size: unsafe extern "C" fn(*const MemoryDesc) -> usize,
    memory_desc_equal: unsafe extern "C" fn(*const MemoryDesc, *const MemoryDesc) -> c_int,
    matmul_desc_init: unsafe extern "C" fn(
        *mut MatmulDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
    ) -> Status,
    attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    attr_set_scratchpad_mode: unsafe extern "C" fn(Handle, c_int) -> Status,
    primitive_desc_create:
        unsafe extern "C" fn(*mut Handle, *const c_void, Handle, Handle, Handle) -> Status,
    reorder_primitive_desc_create: unsafe extern "C" fn(
        *mut Handle,
        *const MemoryDesc,
        Handle,
        *const MemoryDesc,
        Handle,
        Handle,
    ) -> Status,
    primitive_desc_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    primitive_desc_query_md: unsafe extern "C" fn(Handle, c_int, c_int) -> *const MemoryDesc,
    primitive_desc_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    memory_create: unsafe extern "C" fn(*mut Handle, *const MemoryDesc, Handle, Handle) -> Status,
    memory_get_data_handle: unsafe extern "C" fn(Handle, *mut Handle) -> Status,
    memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    /// OpenMP's, when the library runs on OpenMP: each calling thread asks for a team of one,
    /// since the callers split the rows across the cores themselves.
    omp_set_num_threads: Option<unsafe extern "C" fn(c_int)>,
}

impl Api {
    /// # Safety
    /// `lib` must be oneDNN 2.x, whose functions have the signatures above.
    unsafe fn bind(lib: &Library) -> Result<Self, String> {
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the caller's contract: the symbol has the field's signature.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{}: {e}", $name))?
            };
        }
        Ok(Self {
            version: sym!("dnnl_version"),
            engine_create: sym!("dnnl_engine_create"),
            stream_create: sym!("dnnl_stream_create"),
            memory_desc_init_by_tag: sym!("dnnl_memory_desc_init_by_tag"),
            memory_desc_get_size: sym!("dnnl_memory_desc_get_size"),
            memory_desc_equal: sym!("dnnl_memory_desc_equal"),
            matmul_desc_init: sym!("dnnl_matmul_desc_init"),
            attr_create: sym!("dnnl_primitive_attr_create"),
            attr_destroy: sym!("dnnl_primitive_attr_destroy"),
            attr_set_scratchpad_mode: sym!("dnnl_primitive_attr_set_scratchpad_mode"),
            primitive_desc_create: sym!("dnnl_primitive_desc_create"),
            reorder_primitive_desc_create: sym!("dnnl_reorder_primitive_desc_create"),
            primitive_desc_query: sym!("dnnl_primitive_desc_query"),
            primitive_desc_query_md: sym!("dnnl_primitive_desc_query_md"),
            primitive_desc_destroy: sym!("dnnl_primitive_desc_destroy"),
            primitive_create: sym!("dnnl_primitive_create"),
            primitive_destroy: sym!("dnnl_primitive_destroy"),
            primitive_execute: sym!("dnnl_primitive_execute"),
            stream_wait: sym!("dnnl_stream_wait"),
            memory_create: sym!("dnnl_memory_create"),
            memory_get_data_handle: sym!("dnnl_memory_get_data_handle"),
            memory_destroy: sym!("dnnl_memory_destroy"),
            // SAFETY: OpenMP's `void omp_set_num_threads(int)`.
            omp_set_num_threads: unsafe { lib.get(b"omp_set_num_threads\0") }
                .ok()
                .map(|f| *f),
        })
    }
}

fn check(status: Status, what: &str) -> Result<(), String> {
    if status == SUCCESS {
        Ok(())
    } else {
        Err(format!("oneDNN {what} failed (status {status})"))
    }
}

/// The loaded library: its entry points, a CPU engine, and the matmul primitives made so far
/// (one per shape; a primitive does not depend on the weights it multiplies).
pub(crate) struct OneDnn {
    api: Api,
    engine: Handle,
    /// `major.minor.patch`, for messages.
    pub version: String,
    uses_omp: bool,
    matmuls: Mutex<HashMap<[usize; 3], Arc<Matmul>>>,
    /// Keeps the entry points valid; never unloaded.
    _lib: Library,
}

// SAFETY: a oneDNN engine may be used from any thread, the API table is plain function
// pointers, and the primitive cache is behind a mutex.
unsafe impl Send for OneDnn {}
// SAFETY: as above.
unsafe impl Sync for OneDnn {}

/// The library names tried, in order: oneDNN 2.x's soname (Debian and Ubuntu's `libdnnl2`).
const LIBRARY_NAMES: &[&str] = &["libdnnl.so.2"];

impl OneDnn {
    /// The process's oneDNN, loaded on first use; the error says why there is none.
    pub(crate) fn get() -> Result<&'static Self, String> {
        static LOADED: OnceLock<Result<OneDnn, String>> = OnceLock::new();
        LOADED
            .get_or_init(Self::load)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn load() -> Result<Self, String> {
        let mut errors = Vec::new();
        for name in LIBRARY_NAMES {
            // SAFETY: loading oneDNN runs its initialisers, which have no preconditions.
            match unsafe { Library::new(name) } {
                Ok(lib) => return Self::from_library(lib),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(format!(
            "oneDNN 2.x was not found ({}; on Debian or Ubuntu: apt-get install libdnnl2)",
            errors.join("; ")
        ))
    }

    fn from_library(lib: Library) -> Result<Self, String> {
        // SAFETY: a library of oneDNN 2.x's soname has its 2.x signatures.
        let api = unsafe { Api::bind(&lib) }?;
        // SAFETY: `dnnl_version` returns a pointer to a static struct.
        let version = unsafe { &*(api.version)() };
        let mut engine = null_mut();
        // SAFETY: `engine` is a valid out-pointer.
        check(
            unsafe { (api.engine_create)(&mut engine, ENGINE_CPU, 0) },
            "engine creation",
        )?;
        Ok(Self {
            version: format!("{}.{}.{}", version.major, version.minor, version.patch),
            uses_omp: version.cpu_runtime == CPU_RUNTIME_OMP,
            api,
            engine,
            matmuls: Mutex::new(HashMap::new()),
            _lib: lib,
        })
    }

    /// A plain row-major `rows x cols` descriptor of `data_type`, or one whose layout the
    /// primitive picks (`FORMAT_TAG_ANY`).
    fn desc(&self, [rows, cols]: [usize; 2], data_type: c_int, tag: c_int) -> MemoryDesc {
        let mut desc = MemoryDesc([0; 696]);
        let dims = [rows as i64, cols as i64];
        // SAFETY: `desc` is a writable descriptor and `dims` holds the 2 dimensions named.
        let status = unsafe {
            (self.api.memory_desc_init_by_tag)(&mut desc, 2, dims.as_ptr(), data_type, tag)
        };
        // Only fails for invalid arguments, which these constants and sizes are not.
        debug_assert_eq!(status, SUCCESS);
        desc
    }

    /// The matmul primitive for `rows x d_in` bf16 rows times packed `d_in x d_out` weights plus
    /// an f32 bias, made on first use.
    pub(crate) fn matmul(
        &'static self,
        [rows, d_in, d_out]: [usize; 3],
    ) -> Result<Arc<Matmul>, String> {
        let key = [rows, d_in, d_out];
        let mut cache = self.matmuls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache.get(&key) {
            return Ok(found.clone());
        }
        let made = Arc::new(Matmul::new(self, key)?);
        cache.insert(key, made.clone());
        Ok(made)
    }

    /// Runs `primitive` on a stream of its own and waits for it.
    fn execute(&self, primitive: Handle, args: &[ExecArg]) -> Result<(), String> {
        thread_local! {
            static STREAM: std::cell::Cell<Handle> = const { std::cell::Cell::new(null_mut()) };
        }
        let stream = STREAM.with(|cell| {
            if cell.get().is_null() {
                let mut stream = null_mut();
                // SAFETY: `stream` is a valid out-pointer and the engine lives forever.
                check(
                    unsafe {
                        (self.api.stream_create)(&mut stream, self.engine, STREAM_DEFAULT_FLAGS)
                    },
                    "stream creation",
                )?;
                if let (true, Some(set_threads)) = (self.uses_omp, self.api.omp_set_num_threads) {
                    // SAFETY: sets this thread's OpenMP team size; no preconditions.
                    unsafe { set_threads(1) };
                }
                cell.set(stream);
            }
            Ok::<_, String>(cell.get())
        })?;
        // SAFETY: `primitive` is a live primitive and `args` name live memory objects whose
        // buffers have the sizes of the primitive's descriptors (the callers' contract).
        check(
            unsafe {
                (self.api.primitive_execute)(primitive, stream, args.len() as c_int, args.as_ptr())
            },
            "matmul",
        )?;
        // SAFETY: `stream` is this thread's live stream.
        check(unsafe { (self.api.stream_wait)(stream) }, "stream wait")
    }

    /// A memory object over `data` (not owned), described by `desc`; over a buffer of its own
    /// for `MEMORY_ALLOCATE`.
    ///
    /// # Safety
    /// `data` must stay valid for the memory object's use, holding `desc`'s size in bytes (or
    /// be `MEMORY_ALLOCATE`).
    unsafe fn wrap(&self, desc: &MemoryDesc, data: *mut c_void) -> Result<Memory<'_>, String> {
        let mut handle = null_mut();
        // SAFETY: `handle` is a valid out-pointer; the caller vouches for `data`.
        check(
            unsafe { (self.api.memory_create)(&mut handle, desc, self.engine, data) },
            "memory creation",
        )?;
        Ok(Memory { dnn: self, handle })
    }
}

/// A oneDNN memory object, destroyed when dropped.
struct Memory<'a> {
    dnn: &'a OneDnn,
    handle: Handle,
}

impl Drop for Memory<'_> {
    fn drop(&mut self) {
        // SAFETY: `handle` is a live memory object, destroyed once.
        unsafe { (self.dnn.api.memory_destroy)(self.handle) };
    }
}

/// One matmul primitive (`rows x d_in` bf16 by the packed weights plus bias into `rows x
/// d_out` f32) with the descriptors its buffers must match.
pub(crate) struct Matmul {
    dnn: &'static OneDnn,
    primitive: Handle,
    src: MemoryDesc,
    dst: MemoryDesc,
    weights: MemoryDesc,
    bias: MemoryDesc,
    scratchpad: MemoryDesc,
    scratchpad_bytes: usize,
    /// oneDNN's name for the implementation chosen (`brg:avx512_core_amx_bf16`, ...).
    pub implementation: String,
}

// SAFETY: oneDNN primitives may be executed from several threads at once; each call passes its
// own scratchpad (user scratchpad mode) and uses its thread's stream.
unsafe impl Send for Matmul {}
// SAFETY: as above.
unsafe impl Sync for Matmul {}

impl Matmul {
    fn new(dnn: &'static OneDnn, [rows, d_in, d_out]: [usize; 3]) -> Result<Self, String> {
        let api = &dnn.api;
        let src = dnn.desc([rows, d_in], DATA_TYPE_BF16, FORMAT_TAG_AB);
        let any_weights = dnn.desc([d_in, d_out], DATA_TYPE_BF16, FORMAT_TAG_ANY);
        let bias = dnn.desc([1, d_out], DATA_TYPE_F32, FORMAT_TAG_AB);
        let dst = dnn.desc([rows, d_out], DATA_TYPE_F32, FORMAT_TAG_AB);
        let mut op = MatmulDesc([0; 2800]);
        // SAFETY: all descriptors are initialised and `op` is writable.
        check(
            unsafe { (api.matmul_desc_init)(&mut op, &src, &any_weights, &bias, &dst) },
            "matmul description",
        )?;
        let mut attr = null_mut();
        // SAFETY: `attr` is a valid out-pointer; it is destroyed below.
        check(unsafe { (api.attr_create)(&mut attr) }, "attributes")?;
        // SAFETY: `attr` is live.
        let status = unsafe { (api.attr_set_scratchpad_mode)(attr, SCRATCHPAD_MODE_USER) };
        let mut pd = null_mut();
        let created = check(status, "scratchpad mode").and_then(|()| {
            // SAFETY: `op` is a matmul description, `attr` and the engine are live.
            check(
                unsafe {
                    (api.primitive_desc_create)(
                        &mut pd,
                        (&op as *const MatmulDesc).cast(),
                        attr,
                        dnn.engine,
                        null_mut(),
                    )
                },
                "matmul for bf16",
            )
        });
        // SAFETY: `attr` is live and no longer needed.
        unsafe { (api.attr_destroy)(attr) };
        created?;
        let made = Self::from_desc(dnn, pd, src, dst, bias);
        // SAFETY: `pd` is live; the primitive keeps what it needs of it.
        unsafe { (api.primitive_desc_destroy)(pd) };
        made
    }

    fn from_desc(
        dnn: &'static OneDnn,
        pd: Handle,
        src: MemoryDesc,
        dst: MemoryDesc,
        bias: MemoryDesc,
    ) -> Result<Self, String> {
        let api = &dnn.api;
        let mut info: *const c_char = std::ptr::null();
        // SAFETY: `pd` is live and the implementation query writes a C string pointer, owned
        // by `pd`, which is copied before `pd` is destroyed.
        check(
            unsafe {
                (api.primitive_desc_query)(
                    pd,
                    QUERY_IMPL_INFO_STR,
                    0,
                    (&mut info as *mut *const c_char).cast(),
                )
            },
            "implementation query",
        )?;
        let implementation = if info.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string owned by `pd`, live here.
            unsafe { CStr::from_ptr(info) }
                .to_string_lossy()
                .into_owned()
        };
        let query = |what| {
            // SAFETY: `pd` is live; the query returns a descriptor owned by it (or null), which
            // is copied here.
            let desc = unsafe { (api.primitive_desc_query_md)(pd, what, 0) };
            // SAFETY: non-null, it points at an initialised descriptor.
            (!desc.is_null())
                .then(|| unsafe { *desc })
                .ok_or_else(|| format!("oneDNN has no descriptor for query {what}"))
        };
        let (weights, scratchpad) = (query(QUERY_WEIGHTS_MD)?, query(QUERY_SCRATCHPAD_MD)?);
        // SAFETY: an initialised descriptor.
        let scratchpad_bytes = unsafe { (api.memory_desc_get_size)(&scratchpad) };
        let mut primitive = null_mut();
        // SAFETY: `primitive` is a valid out-pointer and `pd` is live.
        check(
            unsafe { (api.primitive_create)(&mut primitive, pd) },
            "primitive creation",
        )?;
        Ok(Self {
            dnn,
            primitive,
            src,
            dst,
            weights,
            bias,
            scratchpad,
            scratchpad_bytes,
            implementation,
        })
    }

    /// Whether the primitive runs on bf16 hardware (AMX tiles or AVX512-BF16 instructions)
    /// rather than emulating bf16, which is slower than the `f32` products.
    pub(crate) fn on_bf16_hardware(&self) -> bool {
        self.implementation.contains("amx") || self.implementation.contains("bf16")
    }

    /// `weight` (row-major `d_in x d_out` f32) reordered into this primitive's bf16 layout.
    pub(crate) fn pack(&self, weight: &[f32], [d_in, d_out]: [usize; 2]) -> Result<Packed, String> {
        let dnn = self.dnn;
        let plain = dnn.desc([d_in, d_out], DATA_TYPE_F32, FORMAT_TAG_AB);
        // SAFETY: an initialised descriptor.
        if weight.len() != d_in * d_out
            || unsafe { (dnn.api.memory_desc_get_size)(&plain) } != std::mem::size_of_val(weight)
        {
            return Err(format!(
                "{} weights for a {d_in} x {d_out} matrix",
                weight.len()
            ));
        }
        // SAFETY: `weight` holds the plain descriptor's size; oneDNN only reads it (a reorder's
        // source).
        let from = unsafe { dnn.wrap(&plain, weight.as_ptr().cast_mut().cast()) }?;
        let packed = Packed::allocate(dnn, self.weights)?;
        let mut pd = null_mut();
        // SAFETY: both descriptors are initialised and the engine is live.
        check(
            unsafe {
                (dnn.api.reorder_primitive_desc_create)(
                    &mut pd,
                    &plain,
                    dnn.engine,
                    &self.weights,
                    dnn.engine,
                    null_mut(),
                )
            },
            "weight reorder",
        )?;
        let mut reorder = null_mut();
        // SAFETY: `pd` is live.
        let status = unsafe { (dnn.api.primitive_create)(&mut reorder, pd) };
        // SAFETY: `pd` is live and no longer needed.
        unsafe { (dnn.api.primitive_desc_destroy)(pd) };
        check(status, "weight reorder")?;
        let args = [
            ExecArg {
                arg: ARG_FROM,
                memory: from.handle,
            },
            ExecArg {
                arg: ARG_TO,
                memory: packed.memory.handle,
            },
        ];
        let done = dnn.execute(reorder, &args);
        // SAFETY: `reorder` is live and has finished (`execute` waits).
        unsafe { (dnn.api.primitive_destroy)(reorder) };
        done.map(|()| packed)
    }

    /// `dst = src · weights + bias` for this primitive's row count: every value of `dst` is
    /// written when it returns Ok.
    ///
    /// Returns an error (and leaves `dst` unspecified) when a buffer does not have the
    /// primitive's size or `weights` was packed for another layout.
    pub(crate) fn run(
        &self,
        src: &[u16],
        weights: &Packed,
        bias: &[f32],
        dst: &mut [std::mem::MaybeUninit<f32>],
    ) -> Result<(), String> {
        let dnn = self.dnn;
        let api = &dnn.api;
        // SAFETY: initialised descriptors.
        let fits = unsafe {
            (api.memory_desc_equal)(&self.weights, &weights.desc) == 1
                && (api.memory_desc_get_size)(&self.src) == std::mem::size_of_val(src)
                && (api.memory_desc_get_size)(&self.dst) == std::mem::size_of_val(dst)
                && (api.memory_desc_get_size)(&self.bias) == std::mem::size_of_val(bias)
        };
        if !fits {
            return Err("operands do not fit the matmul primitive".into());
        }
        // Only written and read by oneDNN, so left uninitialised: no Rust reference to its
        // contents is made.
        let mut scratchpad: Vec<u8> = Vec::with_capacity(self.scratchpad_bytes);
        // SAFETY: each buffer holds its descriptor's size (checked above); oneDNN reads `src`,
        // `bias` and the packed weights and writes only `dst` and the scratchpad, which are
        // borrowed mutably for the call.
        let (src, bias, dst, scratch) = unsafe {
            (
                dnn.wrap(&self.src, src.as_ptr().cast_mut().cast())?,
                dnn.wrap(&self.bias, bias.as_ptr().cast_mut().cast())?,
                dnn.wrap(&self.dst, dst.as_mut_ptr().cast())?,
                dnn.wrap(&self.scratchpad, scratchpad.as_mut_ptr().cast())?,
            )
        };
        let args_len = if self.scratchpad_bytes == 0 { 4 } else { 5 };
        let args = [
            ExecArg {
                arg: ARG_SRC,
                memory: src.handle,
            },
            ExecArg {
                arg: ARG_WEIGHTS,
                memory: weights.memory.handle,
            },
            ExecArg {
                arg: ARG_BIAS,
                memory: bias.handle,
            },
            ExecArg {
                arg: ARG_DST,
                memory: dst.handle,
            },
            ExecArg {
                arg: ARG_SCRATCHPAD,
                memory: scratch.handle,
            },
        ];
        dnn.execute(self.primitive, &args[..args_len])
    }
}

impl Drop for Matmul {
    fn drop(&mut self) {
        // SAFETY: `primitive` is live and destroyed once.
        unsafe { (self.dnn.api.primitive_destroy)(self.primitive) };
    }
}

/// Weights in a primitive's packed bf16 layout, in a buffer oneDNN allocated.
pub(crate) struct Packed {
    memory: Memory<'static>,
    desc: MemoryDesc,
}

// SAFETY: the buffer is only read after packing, from any thread.
unsafe impl Send for Packed {}
// SAFETY: as above.
unsafe impl Sync for Packed {}

impl Packed {
    fn allocate(dnn: &'static OneDnn, desc: MemoryDesc) -> Result<Self, String> {
        // SAFETY: oneDNN allocates (and frees with the memory object) the descriptor's size.
        let memory = unsafe { dnn.wrap(&desc, MEMORY_ALLOCATE) }?;
        let mut data = null_mut();
        // SAFETY: `memory` is live and `data` a valid out-pointer.
        let status = unsafe { (dnn.api.memory_get_data_handle)(memory.handle, &mut data) };
        check(status, "weight buffer")?;
        if data.is_null() {
            return Err("oneDNN allocated no weight buffer".into());
        }
        Ok(Self { memory, desc })
    }

    /// Bytes of the packed buffer.
    pub(crate) fn bytes(&self) -> usize {
        // SAFETY: an initialised descriptor.
        unsafe { (self.memory.dnn.api.memory_desc_get_size)(&self.desc) }
    }
}
