import { describe, expect, it } from 'vitest';
import { SmallBlobCache } from '../src/store/small-blob-cache.js';

const blob = (n: number, fill: number) => Buffer.alloc(n, fill);

describe('SmallBlobCache', () => {
  it('keeps entries within its byte budget, evicting the least recently used first', () => {
    const cache = new SmallBlobCache(10);
    cache.set('a', blob(4, 1));
    cache.set('b', blob(4, 2));
    expect(cache.get('a')?.[0]).toBe(1); // a is now the most recently used
    cache.set('c', blob(4, 3)); // 12 bytes > 10: b, the least recently used, goes
    expect(cache.get('b')).toBeUndefined();
    expect(cache.get('a')?.[0]).toBe(1);
    expect(cache.get('c')?.[0]).toBe(3);
    expect(cache.size).toEqual({ entries: 2, bytes: 8 });
  });

  it('never holds an entry larger than the whole budget, and delete frees its bytes', () => {
    const cache = new SmallBlobCache(10);
    cache.set('big', blob(11, 0));
    expect(cache.get('big')).toBeUndefined();
    cache.set('a', blob(6, 1));
    cache.delete('a');
    expect(cache.size).toEqual({ entries: 0, bytes: 0 });
    cache.set('b', blob(10, 2));
    expect(cache.get('b')?.length).toBe(10);
  });
});
