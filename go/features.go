package steptime

import "math"

// BlockTokens is the number of tokens in one KV-cache block. The study's experiments ran vLLM
// with a block size of 16, and kv_sum counts whole blocks, as the trace's used-block count does.
const BlockTokens = 1 << blockShift

const blockShift = 4

// Request is what the step-time model needs to know about one request of a batch. The fields
// follow the BLIS simulator's request (TRACE_FORMAT.md §7.1).
type Request struct {
	// InputLen is the number of prompt tokens.
	InputLen int64
	// OutputLen is the number of output tokens generated so far.
	OutputLen int64
	// ProgressIndex is the number of tokens of the sequence processed so far: prompt tokens
	// processed plus output tokens generated. It is 0 on arrival and after a preemption.
	ProgressIndex int64
	// NumNewTokens is the number of tokens assigned to the request in the step being formed
	// (a prefill chunk, 1 for a decode, 0 when the token budget ran out).
	NumNewTokens int64
}

// ModelFacts is the architecture of the served model, from its published configuration.
type ModelFacts struct {
	HiddenDim       int // hidden size
	NumLayers       int // transformer layers
	NumHeads        int // attention (query) heads
	IntermediateDim int // MLP intermediate size
	NumExperts      int // experts per MoE layer (1 for a dense model)
	ActiveExperts   int // experts active per token (1 for a dense model)
}

// Hardware is one GPU's datasheet peaks and the tensor-parallel degree the model is served
// with.
type Hardware struct {
	PeakFlopsBF16 float64 // dense BF16 FLOP/s of one GPU
	PeakBandwidth float64 // HBM bytes/s of one GPU
	TP            int     // tensor-parallel degree: GPUs that run each step together
}

// Features are the 18 inputs of a step-time formula, all float64 as in the study. The
// comments give each feature's name in the study; tokens are counted as in vLLM's
// BATCH_SUMMARY event.
type Features struct {
	PrefillTokens   float64 // prefill_tokens: new tokens of prefill members
	DecodeTokens    float64 // decode_tokens: new tokens of decode members
	ScheduledTokens float64 // scheduled_tokens: PrefillTokens + DecodeTokens
	NumPrefillReqs  float64 // num_prefill_reqs: prefill members with new tokens
	NumDecodeReqs   float64 // num_decode_reqs: decode members with new tokens
	KVSum           float64 // kv_sum: KV tokens held by the batch, rounded up to whole blocks
	KVMean          float64 // kv_mean: KVSum / number of requests
	KVMax           float64 // kv_max: largest per-request context length
	KVMin           float64 // kv_min: smallest per-request context length
	KVStd           float64 // kv_std: population standard deviation of context lengths
	HiddenDim       float64 // hidden_dim
	NumLayers       float64 // num_layers
	NumHeads        float64 // num_heads
	IntermediateDim float64 // intermediate_dim
	NumExperts      float64 // num_experts
	ActiveExperts   float64 // active_experts
	PeakFlopsBF16   float64 // peak_flops_bf16: per-GPU peak x TP
	PeakBandwidth   float64 // peak_bandwidth: per-GPU peak x TP
}

// ComputeFeatures derives a step's features from its batch, the served model and the GPU.
//
// The batch is the whole running batch (no nil entries), as the simulator passes it to
// StepTime. Each request is classified as BLIS does (TRACE_FORMAT.md §7.2): a prefill member
// if ProgressIndex < InputLen, otherwise a decode member if OutputLen >= 1, otherwise it counts
// for no tokens. Every request holds KV, so every request enters the KV features with its
// context length ProgressIndex + NumNewTokens. For an empty batch all batch
// features are 0.
//
// The hardware peaks are the per-GPU peaks times TP: each GPU of the tensor-parallel group
// holds 1/TP of the weights and does 1/TP of the FLOPs, so the group acts as one device with
// TP times the peaks.
//
// ComputeFeatures does not allocate. It makes two passes over the batch, both O(n): the first
// sums tokens, blocks and context lengths exactly in int64 and finds the extremes; the second
// sums squared deviations from the mean. This two-pass variance is the numerically sound
// textbook method: unlike the one-pass sum-of-squares formula it cannot cancel catastrophically
// when the lengths are large and close together, and unlike Welford's update it needs no
// division per request.
func ComputeFeatures(batch []*Request, m ModelFacts, hw Hardware) Features {
	f := Features{
		HiddenDim:       float64(m.HiddenDim),
		NumLayers:       float64(m.NumLayers),
		NumHeads:        float64(m.NumHeads),
		IntermediateDim: float64(m.IntermediateDim),
		NumExperts:      float64(m.NumExperts),
		ActiveExperts:   float64(m.ActiveExperts),
		PeakFlopsBF16:   hw.PeakFlopsBF16 * float64(hw.TP),
		PeakBandwidth:   hw.PeakBandwidth * float64(hw.TP),
	}
	if len(batch) == 0 {
		return f
	}

	var prefill, decode, numPrefill, numDecode, blocks, ctxSum int64
	ctxMin, ctxMax := int64(math.MaxInt64), int64(math.MinInt64)
	for _, r := range batch {
		switch {
		case r.ProgressIndex < r.InputLen:
			prefill += r.NumNewTokens
			if r.NumNewTokens > 0 {
				numPrefill++
			}
		case r.OutputLen >= 1:
			decode += r.NumNewTokens
			if r.NumNewTokens > 0 {
				numDecode++
			}
		}
		ctx := r.ProgressIndex + r.NumNewTokens
		// ceil(ctx / BlockTokens) as a floor division by shifting, which is exact for every
		// int64 and cheaper than Go's truncating signed division.
		blocks += (ctx + BlockTokens - 1) >> blockShift
		ctxSum += ctx
		ctxMin = min(ctxMin, ctx)
		ctxMax = max(ctxMax, ctx)
	}

	n := float64(len(batch))
	mean := float64(ctxSum) / n
	var squares float64
	for _, r := range batch {
		d := float64(r.ProgressIndex+r.NumNewTokens) - mean
		// The conversion keeps d*d rounded before the sum, so that no platform fuses it into
		// an FMA: the features are then bit-identical on every GOARCH.
		squares += float64(d * d)
	}

	f.PrefillTokens = float64(prefill)
	f.DecodeTokens = float64(decode)
	f.ScheduledTokens = float64(prefill + decode)
	f.NumPrefillReqs = float64(numPrefill)
	f.NumDecodeReqs = float64(numDecode)
	f.KVSum = float64(blocks * BlockTokens)
	f.KVMean = f.KVSum / n
	f.KVMax = float64(ctxMax)
	f.KVMin = float64(ctxMin)
	f.KVStd = math.Sqrt(squares / n)
	return f
}

// FeatureNames are the study's names of the 18 features, in the order of the fields of
// Features.
var FeatureNames = [18]string{
	"prefill_tokens", "decode_tokens", "scheduled_tokens", "num_prefill_reqs",
	"num_decode_reqs", "kv_sum", "kv_mean", "kv_max", "kv_min", "kv_std", "hidden_dim",
	"num_layers", "num_heads", "intermediate_dim", "num_experts", "active_experts",
	"peak_flops_bf16", "peak_bandwidth",
}

// Field returns a pointer to the feature with the study's name, or nil if there is no such
// feature. It lets tools read and write features by the names Python uses.
func (f *Features) Field(name string) *float64 {
	switch name {
	case "prefill_tokens":
		return &f.PrefillTokens
	case "decode_tokens":
		return &f.DecodeTokens
	case "scheduled_tokens":
		return &f.ScheduledTokens
	case "num_prefill_reqs":
		return &f.NumPrefillReqs
	case "num_decode_reqs":
		return &f.NumDecodeReqs
	case "kv_sum":
		return &f.KVSum
	case "kv_mean":
		return &f.KVMean
	case "kv_max":
		return &f.KVMax
	case "kv_min":
		return &f.KVMin
	case "kv_std":
		return &f.KVStd
	case "hidden_dim":
		return &f.HiddenDim
	case "num_layers":
		return &f.NumLayers
	case "num_heads":
		return &f.NumHeads
	case "intermediate_dim":
		return &f.IntermediateDim
	case "num_experts":
		return &f.NumExperts
	case "active_experts":
		return &f.ActiveExperts
	case "peak_flops_bf16":
		return &f.PeakFlopsBF16
	case "peak_bandwidth":
		return &f.PeakBandwidth
	}
	return nil
}
