package kagi.conf;

class Square extends Shape implements Named {
    short side;

    Square(short s) {
        side = s;
    }

    short area() {
        return (short) (side * side);
    }

    public short id() {
        return 1;
    }
}
