package steptime

import (
	"math"
	"testing"
)

// Results go to package variables so that the compiler cannot drop the benchmarked work.
var (
	sinkFeatures Features
	sinkFloat    float64
	sinkInt      int64
)

// benchBatch is a full batch as the study's experiments ran them (max_num_seqs 128): one
// prefill chunk and 127 decodes with contexts spread over 100..4000 tokens.
func benchBatch(n int) []*Request {
	batch := make([]*Request, n)
	batch[0] = &Request{InputLen: 3000, ProgressIndex: 1024, NumNewTokens: 1921}
	for i := 1; i < n; i++ {
		in := int64(100 + (i*37)%3000)
		out := int64(1 + (i*13)%900)
		batch[i] = &Request{InputLen: in, OutputLen: out, ProgressIndex: in + out - 1, NumNewTokens: 1}
	}
	return batch
}

// roofline stands in for an evolved formula: about the size of a selected program (a few
// dozen operations, a where, a max, a log).
func roofline(f Features) float64 {
	weights := float64(float64(24*f.HiddenDim)*f.HiddenDim) * f.NumLayers
	flops := float64(2*f.ScheduledTokens) * weights
	bytes := float64(2*weights) + float64(float64(4*f.KVSum)*f.HiddenDim)*f.NumLayers/f.NumHeads
	compute := flops / f.PeakFlopsBF16 * 1e6
	memory := bytes / f.PeakBandwidth * 1e6
	mixed := where(f.PrefillTokens > 0, float64(0.05*f.NumPrefillReqs), 0)
	return maximum(compute, memory)*1.2 + float64(3.1*math.Log1p(f.DecodeTokens)) + mixed + 40
}

var rooflineFormula = Formula{Target: "bench", Predict: roofline}

func BenchmarkComputeFeatures(b *testing.B) {
	batch := benchBatch(128)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sinkFeatures = ComputeFeatures(batch, testFacts, testHW)
	}
}

// BenchmarkFormula times the formula alone on precomputed features, called through the
// Formula's func value as StepTime calls it.
func BenchmarkFormula(b *testing.B) {
	benchFormula(b, rooflineFormula)
}

// BenchmarkGeneratedFormula does the same for every generated formula in the package.
func BenchmarkGeneratedFormula(b *testing.B) {
	for _, formula := range Formulas() {
		b.Run(formula.Target, func(b *testing.B) { benchFormula(b, formula) })
	}
}

func benchFormula(b *testing.B, formula Formula) {
	f := ComputeFeatures(benchBatch(128), testFacts, testHW)
	predict := formula.Predict
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sinkFloat = predict(f)
	}
}

// BenchmarkStepTime times the whole StepTime of a 128-request batch: features, formula and
// rounding.
func BenchmarkStepTime(b *testing.B) {
	m, err := NewModel(rooflineFormula, testFacts, testHW, Overheads{})
	if err != nil {
		b.Fatal(err)
	}
	batch := benchBatch(128)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sinkInt = m.StepTime(batch)
	}
}
