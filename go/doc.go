// Package steptime is the step-time latency model of an LLM-serving simulator, shipped from
// the stepformula study.
//
// The study evolves a compact formula that predicts the time of one vLLM engine step, in
// microseconds, from 18 features of the step's batch, and selects the best one for each of two
// targets: duration_us (the scheduler's CPU time for one step, what the BLIS study measured)
// and period_us (the real start-to-start period of the engine loop). The selected programs are
// translated to Go by the study's emitter into one generated file per target
// (<target>_formula.go); each registers itself as a [Formula] when the package loads.
//
// A simulator builds a [Model] from a registered formula, the model's architecture
// ([ModelFacts]), the GPU ([Hardware]) and the constant [Overheads], and calls
// [Model.StepTime] with the running batch. [ComputeFeatures] turns the batch into the
// formula's [Features] the way the study derived them from vLLM's traces.
//
// The generated formulas mirror numpy's IEEE float64 semantics operation by operation; the
// tests in vectors_test.go check them against the predictions Python made, read from
// testdata/<target>_vectors.json.
package steptime
