package steptime

import (
	"math"
	"reflect"
	"testing"
)

var (
	testFacts = ModelFacts{HiddenDim: 8192, NumLayers: 80, NumHeads: 64, IntermediateDim: 28672, NumExperts: 1, ActiveExperts: 1}
	testHW    = Hardware{PeakFlopsBF16: 989.5e12, PeakBandwidth: 3.35e12, TP: 4}
)

// withFacts returns the batch features b completed with the facts of testFacts and testHW.
func withFacts(b Features) Features {
	b.HiddenDim, b.NumLayers, b.NumHeads, b.IntermediateDim = 8192, 80, 64, 28672
	b.NumExperts, b.ActiveExperts = 1, 1
	b.PeakFlopsBF16, b.PeakBandwidth = 989.5e12*4, 3.35e12*4
	return b
}

func TestComputeFeatures(t *testing.T) {
	tests := []struct {
		name  string
		batch []*Request
		want  Features
	}{
		{
			name:  "empty batch",
			batch: nil,
			want:  withFacts(Features{}),
		},
		{
			name: "pure prefill",
			batch: []*Request{
				{InputLen: 100, ProgressIndex: 0, NumNewTokens: 100}, // whole prompt: ctx 100, 7 blocks
				{InputLen: 50, ProgressIndex: 20, NumNewTokens: 30},  // last chunk: ctx 50, 4 blocks
			},
			want: withFacts(Features{
				PrefillTokens: 130, ScheduledTokens: 130, NumPrefillReqs: 2,
				KVSum: 176, KVMean: 88, KVMax: 100, KVMin: 50, KVStd: 25,
			}),
		},
		{
			name: "pure decode",
			batch: []*Request{
				{InputLen: 10, OutputLen: 5, ProgressIndex: 14, NumNewTokens: 1}, // ctx 15, 1 block
				{InputLen: 30, OutputLen: 2, ProgressIndex: 31, NumNewTokens: 1}, // ctx 32, 2 blocks
			},
			want: withFacts(Features{
				DecodeTokens: 2, ScheduledTokens: 2, NumDecodeReqs: 2,
				KVSum: 48, KVMean: 24, KVMax: 32, KVMin: 15, KVStd: 8.5,
			}),
		},
		{
			name: "mixed, with idle and unclassified requests",
			batch: []*Request{
				{InputLen: 64, ProgressIndex: 32, NumNewTokens: 32},             // prefill chunk: ctx 64
				{InputLen: 8, OutputLen: 3, ProgressIndex: 10, NumNewTokens: 1}, // decode: ctx 11
				{InputLen: 40, ProgressIndex: 16, NumNewTokens: 0},              // prefill, budget ran out: ctx 16
				{InputLen: 5, OutputLen: 0, ProgressIndex: 5, NumNewTokens: 2},  // neither class: no tokens, ctx 7
			},
			want: withFacts(Features{
				PrefillTokens: 32, DecodeTokens: 1, ScheduledTokens: 33,
				NumPrefillReqs: 1, NumDecodeReqs: 1,
				KVSum: 16 * (4 + 1 + 1 + 1), KVMean: 16 * 7 / 4.0, KVMax: 64, KVMin: 7,
				KVStd: popStd(64, 11, 16, 7),
			}),
		},
		{
			name: "decode member with 0 new tokens holds KV but is not counted",
			batch: []*Request{
				{InputLen: 4, OutputLen: 9, ProgressIndex: 12, NumNewTokens: 0}, // ctx 12
			},
			want: withFacts(Features{KVSum: 16, KVMean: 16, KVMax: 12, KVMin: 12}),
		},
		{
			name: "block rounding at 0, 1, 16 and 17 tokens",
			batch: []*Request{
				{InputLen: 1, ProgressIndex: 0, NumNewTokens: 0},   // 0 blocks
				{InputLen: 1, ProgressIndex: 0, NumNewTokens: 1},   // 1 block
				{InputLen: 16, ProgressIndex: 0, NumNewTokens: 16}, // 1 block
				{InputLen: 17, ProgressIndex: 0, NumNewTokens: 17}, // 2 blocks
			},
			want: withFacts(Features{
				PrefillTokens: 34, ScheduledTokens: 34, NumPrefillReqs: 3,
				KVSum: 64, KVMean: 16, KVMax: 17, KVMin: 0, KVStd: popStd(0, 1, 16, 17),
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ComputeFeatures(tt.batch, testFacts, testHW)
			for _, name := range FeatureNames {
				if g, w := *got.Field(name), *tt.want.Field(name); math.Abs(g-w) > 1e-12*math.Abs(w) {
					t.Errorf("%s = %v, want %v", name, g, w)
				}
			}
		})
	}
}

// popStd is the population standard deviation, the naive way (fine for small integers).
func popStd(xs ...float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
	}
	mean := sum / float64(len(xs))
	for _, x := range xs {
		sq += (x - mean) * (x - mean)
	}
	return math.Sqrt(sq / float64(len(xs)))
}

// The one-pass formula E[x²]−E[x]² would return 0 or garbage here: at 1e12 tokens the squares
// are 1e24 and their difference is far below float64's resolution.
func TestComputeFeaturesStdIsNumericallySound(t *testing.T) {
	const base = 1_000_000_000_000
	batch := []*Request{
		{InputLen: 1, OutputLen: 1, ProgressIndex: base},
		{InputLen: 1, OutputLen: 1, ProgressIndex: base + 1},
		{InputLen: 1, OutputLen: 1, ProgressIndex: base + 2},
	}
	got := ComputeFeatures(batch, testFacts, testHW).KVStd
	if want := math.Sqrt(2.0 / 3.0); math.Abs(got-want) > 1e-12*want {
		t.Errorf("KVStd = %v, want %v", got, want)
	}
}

func TestComputeFeaturesHardwareIsAggregatedOverTP(t *testing.T) {
	for _, tp := range []int{1, 2, 4, 8} {
		f := ComputeFeatures(nil, testFacts, Hardware{PeakFlopsBF16: 1e15, PeakBandwidth: 3e12, TP: tp})
		if f.PeakFlopsBF16 != 1e15*float64(tp) || f.PeakBandwidth != 3e12*float64(tp) {
			t.Errorf("TP %d: peaks %v, %v; want per-GPU peaks x %d", tp, f.PeakFlopsBF16, f.PeakBandwidth, tp)
		}
	}
}

func TestComputeFeaturesDoesNotAllocate(t *testing.T) {
	batch := benchBatch(128)
	if n := testing.AllocsPerRun(100, func() { sinkFeatures = ComputeFeatures(batch, testFacts, testHW) }); n != 0 {
		t.Errorf("ComputeFeatures allocates %v times per call, want 0", n)
	}
}

// FeatureNames must name the fields of Features in order, and Field must map each name to
// its own field: the vectors test and the Python emitter both rely on this table.
func TestFeatureNamesMatchFields(t *testing.T) {
	var f Features
	typ := reflect.TypeOf(f)
	if typ.NumField() != len(FeatureNames) {
		t.Fatalf("Features has %d fields, FeatureNames %d names", typ.NumField(), len(FeatureNames))
	}
	v := reflect.ValueOf(&f).Elem()
	for i, name := range FeatureNames {
		p := f.Field(name)
		if p == nil {
			t.Fatalf("Field(%q) = nil", name)
		}
		if p != v.Field(i).Addr().Interface().(*float64) {
			t.Errorf("Field(%q) is not field %d (%s)", name, i, typ.Field(i).Name)
		}
	}
	if f.Field("running_depth") != nil {
		t.Error(`Field("running_depth") is not nil`)
	}
}
