package telemetry

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"github.com/klauspost/compress/gzip"
	"go.uber.org/zap"
)

// Defaults of FileOptions.
const (
	// DefaultFileBatchSize bounds the events of one Handle call.
	DefaultFileBatchSize = 4096
	// DefaultFileBufferSize is the read buffer size.
	DefaultFileBufferSize = 1 << 20
	// DefaultMaxLoggedBadLines bounds the bad lines logged per file.
	DefaultMaxLoggedBadLines = 100
)

// FileOptions configures reading NDJSON (or other line-oriented) telemetry files.
// Zero values mean the documented default.
type FileOptions struct {
	// Decode configures the default decoder (the native JSON contract); its
	// MaxMessageSize bounds a line.
	Decode DecodeOptions
	// NewDecoder, if set, makes the decoder instead (e.g. a VPCFlowDecoder for flow-log
	// files); it is called once per file.
	NewDecoder func() Decoder
	// BatchSize bounds the events passed to one Handle call. Default 4096.
	BatchSize int
	// BufferSize is the read buffer size, at least Decode.MaxMessageSize + 2; a line
	// longer than the buffer is rejected as oversize without being decoded.
	// Default 1 MiB.
	BufferSize int
	// Strict makes the first bad line fatal: reading stops and the error (a *LineError)
	// is returned. By default bad lines are counted, reported and skipped.
	Strict bool
	// OnBadLine, if set, is called for every line that does not decode or validate.
	OnBadLine func(pos Position, err error)
	// MaxLoggedBadLines bounds the bad lines logged per file; the rest are only
	// counted. Default 100.
	MaxLoggedBadLines int
	// Counters receives the counts; one is created when nil.
	Counters *Counters
	// Logger logs bad lines; nil logs nothing.
	Logger *zap.Logger
	// Admission is the door every decoded event passes (see Admission): names are
	// validated, and event times are checked against the Watermark of the file, so a
	// forged time is refused while a time-sorted recording loses nothing. A refused
	// event is a bad line with its reason. nil means DefaultAdmission().
	Admission *Admission
}

func (o FileOptions) withDefaults() FileOptions {
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultFileBatchSize
	}
	if o.BufferSize <= 0 {
		o.BufferSize = DefaultFileBufferSize
	}
	// A line must fit the buffer to be decoded: never less than the message bound.
	if lim := o.Decode.withDefaults().MaxMessageSize + 2; o.BufferSize < lim {
		o.BufferSize = lim
	}
	if o.MaxLoggedBadLines <= 0 {
		o.MaxLoggedBadLines = DefaultMaxLoggedBadLines
	}
	if o.Admission == nil {
		o.Admission = DefaultAdmission()
	}
	sourceDefaults(&o.Counters, &o.Logger, &o.NewDecoder, o.Decode)
	return o
}

// Position is a line of a named input.
type Position struct {
	// Name is the file name (or the name given to Read).
	Name string
	// Line is the 1-based line number.
	Line int64
}

// String renders the position as name:line.
func (p Position) String() string { return p.Name + ":" + strconv.FormatInt(p.Line, 10) }

// LineError is an error tied to a line of an input: a bad line in strict mode, a
// handler failure (Pos is then the first line whose event was not handed on), or a
// read error.
type LineError struct {
	Pos Position
	Err error
}

// Error renders the error as name:line: err.
func (e *LineError) Error() string { return e.Pos.String() + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *LineError) Unwrap() error { return e.Err }

// FileStats summarizes one read.
type FileStats struct {
	// Lines is the number of lines read.
	Lines int64
	// Events is the number of events the handler accepted.
	Events int64
	// Rejected is the number of lines that did not decode or validate, plus poison
	// events the handler rejected permanently.
	Rejected int64
	// Skipped is the number of lines that carried no event (blank lines, headers…).
	Skipped int64
}

// ReadFile reads the NDJSON file at path, plain or gzip-compressed (detected by its
// magic bytes, not its name), and hands its events to h in batches. See Read.
func ReadFile(ctx context.Context, path string, h Handler, o FileOptions) (FileStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileStats{}, fmt.Errorf("telemetry: %w", err)
	}
	defer f.Close()
	return Read(ctx, path, f, h, o)
}

// Read reads line-oriented telemetry from r, plain or gzip-compressed (detected by the
// magic bytes), decodes each line and hands the events to h in batches, in order.
// Decoding runs concurrently with the handler.
//
// Bad lines are counted, logged (up to MaxLoggedBadLines), reported to OnBadLine with
// their position, and skipped; reading goes on, unless Strict. A poison event (a
// *PartialError with a permanent error, see Handler) is reported the same way. Any other
// handler error stops the read and is returned as a *LineError naming the first line
// whose event was not handed on, so a replay can resume there. Read returns the statistics so far in every
// case, and ctx.Err() if ctx is done first.
func Read(ctx context.Context, name string, r io.Reader, h Handler, o FileOptions) (FileStats, error) {
	o = o.withDefaults()
	br := bufio.NewReaderSize(r, o.BufferSize)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return FileStats{}, &LineError{Pos: Position{Name: name}, Err: fmt.Errorf("gzip: %w", err)}
		}
		defer gz.Close()
		br = bufio.NewReaderSize(gz, o.BufferSize)
	}
	rd := &lineReader{name: name, br: br, o: o, dec: o.NewDecoder(), look: NewLookahead(o.Admission)}
	return rd.run(ctx, h)
}

// fileBatch is a batch of events and the lines they came from.
type fileBatch struct {
	events []Event
	lines  []int64
}

type lineReader struct {
	name string
	br   *bufio.Reader
	o    FileOptions
	dec  Decoder
	look *Lookahead
	ev   Event // the event being decoded

	handlerRejected int64 // written by the consumer

	// Written by the producer only; read after it finished.
	stats     FileStats
	logged    int
	producErr error
}

func (rd *lineReader) run(ctx context.Context, h Handler) (FileStats, error) {
	const nbuf = 3
	free := make(chan *fileBatch, nbuf)
	full := make(chan *fileBatch, nbuf)
	for range nbuf {
		free <- &fileBatch{events: make([]Event, 0, rd.o.BatchSize), lines: make([]int64, 0, rd.o.BatchSize)}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(full)
		rd.producErr = rd.produce(ctx, free, full, stop)
	}()
	var events int64
	var herr error
	for b := range full {
		if herr != nil {
			continue // drain after a failure
		}
		if err := ctx.Err(); err != nil {
			herr = err
			close(stop)
			continue
		}
		for start := 0; start < len(b.events); {
			err := h.Handle(ctx, b.events[start:])
			n := HandledCount(err, len(b.events)-start)
			events += int64(n)
			rd.o.Counters.delivered.Add(uint64(n))
			if err == nil {
				break
			}
			rd.o.Counters.handlerErrors.Add(1)
			pos := Position{Name: rd.name, Line: b.lines[start+n]}
			if IsPoison(err) && ctx.Err() == nil && !rd.o.Strict {
				// A poison event: report it like a bad line and go on.
				rd.o.Counters.Reject(ReasonHandlerFailed)
				rd.handlerRejected++
				if rd.o.OnBadLine != nil {
					rd.o.OnBadLine(pos, err)
				}
				rd.o.Logger.Warn("telemetry: handler rejected an event", zap.Stringer("pos", pos), zap.Error(err))
				start += n + 1
				continue
			}
			herr = &LineError{Pos: pos, Err: fmt.Errorf("telemetry: handler: %w", err)}
			close(stop)
			break
		}
		if herr != nil {
			continue
		}
		free <- b
	}
	wg.Wait()
	st := rd.stats
	st.Events = events
	st.Rejected += rd.handlerRejected
	if herr != nil {
		return st, herr
	}
	if rd.producErr != nil {
		return st, rd.producErr
	}
	return st, ctx.Err()
}

// errStopped ends the producer when the consumer stopped.
var errStopped = errors.New("stopped")

// produce reads and decodes lines into batches.
func (rd *lineReader) produce(ctx context.Context, free <-chan *fileBatch, full chan<- *fileBatch, stop <-chan struct{}) error {
	var b *fileBatch
	get := func() error {
		select {
		case b = <-free:
			b.events, b.lines = b.events[:0], b.lines[:0]
			return nil
		case <-stop:
			return errStopped
		case <-ctx.Done():
			return errStopped
		}
	}
	var counted int64
	count := func() {
		rd.o.Counters.received.Add(uint64(rd.stats.Lines - counted))
		counted = rd.stats.Lines
	}
	defer count()
	put := func() error {
		count()
		select {
		case full <- b:
			b = nil
			return nil
		case <-stop:
			return errStopped
		}
	}
	if err := get(); err != nil {
		return nil
	}
	// refuse reports a bad line; in strict mode, it first hands on the events before it.
	refuse := func(line int64, err error) (stopped bool, berr error) {
		if rd.o.Strict && len(b.events) > 0 && put() != nil {
			return true, nil
		}
		return false, rd.bad(line, err)
	}
	// flush hands on the events the lookahead holds back until the events after them
	// are known: at the end, and before a bad line stops a strict read.
	flush := func() (stopped bool, err error) {
		for {
			out, pos, terr, ok := rd.look.Flush()
			if !ok {
				return false, nil
			}
			if terr != nil {
				if stopped, berr := refuse(pos, terr); stopped || berr != nil {
					return stopped, berr
				}
				continue
			}
			b.events = append(b.events, *out)
			b.lines = append(b.lines, pos)
			if len(b.events) == rd.o.BatchSize {
				if put() != nil || get() != nil {
					return true, nil
				}
			}
		}
	}
	// bad reports a line that did not decode or validate; in strict mode, it first hands
	// on the events before it, the lookahead's included.
	bad := func(line int64, err error) (stopped bool, berr error) {
		if rd.o.Strict {
			if stopped, ferr := flush(); stopped || ferr != nil {
				return stopped, ferr
			}
		}
		return refuse(line, err)
	}
	var line int64
	for {
		data, err := rd.br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: far above any message size bound.
			line++
			rd.stats.Lines++
			n := len(data)
			for errors.Is(err, bufio.ErrBufferFull) {
				data, err = rd.br.ReadSlice('\n')
				n += len(data)
			}
			if stopped, berr := bad(line, newError(ReasonOversize, "", fmt.Sprintf("line of at least %d bytes", n))); stopped || berr != nil {
				return berr
			}
		} else if len(data) > 0 {
			line++
			rd.stats.Lines++
			data = bytes.TrimRight(data, "\r\n")
			derr := rd.dec.Decode(data, &rd.ev)
			if derr == nil {
				derr = rd.o.Admission.CheckIdentity(&rd.ev, "")
			}
			if derr == nil {
				out, pos, terr, ok := rd.look.Push(&rd.ev, line)
				if ok {
					if terr != nil {
						if stopped, berr := refuse(pos, terr); stopped || berr != nil {
							return berr
						}
					} else {
						b.events = append(b.events, *out)
						b.lines = append(b.lines, pos)
						if len(b.events) == rd.o.BatchSize {
							if put() != nil || get() != nil {
								return nil
							}
						}
					}
				}
			} else {
				if len(bytes.TrimSpace(data)) == 0 {
					derr = errSkipEmpty
				}
				if r := ReasonOf(derr); r.IsSkip() {
					rd.stats.Skipped++
					rd.o.Counters.Skip(r)
				} else if stopped, berr := bad(line, derr); stopped || berr != nil {
					return berr
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return &LineError{Pos: Position{Name: rd.name, Line: line + 1}, Err: fmt.Errorf("read: %w", err)}
		}
		if line&1023 == 0 && ctx.Err() != nil {
			return nil
		}
	}
	if stopped, err := flush(); stopped || err != nil {
		return err
	}
	if len(b.events) > 0 {
		_ = put()
	}
	return nil
}

// bad handles a line that did not decode or validate.
func (rd *lineReader) bad(line int64, err error) error {
	pos := Position{Name: rd.name, Line: line}
	rd.stats.Rejected++
	r := ReasonOf(err)
	rd.o.Counters.Reject(r)
	if rd.o.OnBadLine != nil {
		rd.o.OnBadLine(pos, err)
	}
	if rd.o.Strict {
		return &LineError{Pos: pos, Err: err}
	}
	switch {
	case rd.logged < rd.o.MaxLoggedBadLines:
		rd.o.Logger.Warn("telemetry: bad line skipped", zap.Stringer("pos", pos), zap.String("reason", string(r)), zap.String("detail", DetailOf(err)))
	case rd.logged == rd.o.MaxLoggedBadLines:
		rd.o.Logger.Warn("telemetry: further bad lines are counted, not logged", zap.String("file", rd.name))
	}
	rd.logged++
	return nil
}

// FileSource reads files one after the other as a Source. Run returns nil once every
// file is read (it does not wait for ctx), or the first error.
type FileSource struct {
	paths []string
	opts  FileOptions
	mu    sync.Mutex
	stats FileStats
}

var _ Source = (*FileSource)(nil)

// NewFileSource returns a Source over the files at paths, read in order with o.
func NewFileSource(o FileOptions, paths ...string) *FileSource {
	o = o.withDefaults()
	return &FileSource{paths: paths, opts: o}
}

// Counters returns the source's counters.
func (s *FileSource) Counters() *Counters { return s.opts.Counters }

// Stats returns the totals over the files read so far.
func (s *FileSource) Stats() FileStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Run reads every file and hands the events to h.
func (s *FileSource) Run(ctx context.Context, h Handler) error {
	for _, p := range s.paths {
		st, err := ReadFile(ctx, p, h, s.opts)
		s.mu.Lock()
		s.stats.Lines += st.Lines
		s.stats.Events += st.Events
		s.stats.Rejected += st.Rejected
		s.stats.Skipped += st.Skipped
		s.mu.Unlock()
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}
